# Keel: one image for the web server, the RQ workers and the scheduler (docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEEL_VAR_DIR=/app/var

WORKDIR /app
RUN groupadd --system keel && useradd --system --gid keel --home-dir /app keel

COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# collectstatic needs settings to load; these throwaway values exist only in this build step.
RUN DEBUG=0 SECRET_KEY=build-only-not-a-secret \
    KEEL_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    python manage.py collectstatic --noinput \
 && mkdir -p /app/var && chown -R keel:keel /app/var

USER keel
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["python", "-m", "gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", \
     "--workers", "2", "--worker-class", "gthread", "--threads", "16", "--timeout", "120", "--access-logfile", "-"]
