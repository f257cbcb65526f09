FROM python:3.11-slim
WORKDIR /app
ENV UV_PROJECT_ENVIRONMENT=/app/.venv PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir uv==0.13.9
COPY pyproject.toml uv.lock README.md ./
COPY dispatcher ./dispatcher
COPY workers ./workers
COPY schemas ./schemas
RUN uv sync --frozen --no-dev --no-cache
USER nobody
CMD ["dispatcher", "serve", "--host", "0.0.0.0"]
