# An example image of the relay: the README's install, then `python app.py`, as a user
# without privileges. Configure it with environment variables (see .env.example), e.g.
#   docker build -t relay . && docker run --env-file .env -p 8080:8080 relay
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 relay
WORKDIR /app

# The package first, so that editing a tool does not reinstall the dependencies.
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .
COPY app.py ./
COPY tools ./tools

USER relay
ENV PATH=/opt/venv/bin:$PATH HOST=0.0.0.0 PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
CMD ["python", "app.py"]
