"""Cost of an attempt, from the price table kept as data (``data/prices.toml``)."""

import tomllib
from dataclasses import dataclass
from importlib import resources

from schemas.inference import Usage


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_unit: float = 0.0

    def cost(self, usage: Usage) -> float:
        tokens = (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        )
        return round(tokens / 1_000_000 + usage.units * self.per_unit, 8)


class PriceTable:
    def __init__(self, prices: dict[str, dict[str, Price]]) -> None:
        self.prices = prices

    def price(self, provider: str, model: str | None) -> Price:
        models = self.prices.get(provider, {})
        return models.get(model or "", models.get("*", Price()))

    def cost(self, provider: str, model: str | None, usage: Usage) -> float:
        return self.price(provider, model).cost(usage)


def load_prices() -> PriceTable:
    text = resources.files("dispatcher").joinpath("data/prices.toml").read_text()
    data = tomllib.loads(text)
    return PriceTable(
        {
            provider: {model: Price(**fields) for model, fields in models.items()}
            for provider, models in data.items()
        }
    )
