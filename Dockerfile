# One image for web, worker, beat and the Ray head of compose.yaml (GPU engine: requirements-gpu.txt).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 GANTRY_VAR_DIR=/var/lib/gantry
WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-gpu.txt
COPY . .
RUN mkdir -p "$GANTRY_VAR_DIR" && SECRET_KEY=build-only python manage.py collectstatic --noinput -v0
EXPOSE 8080
# Bind, workers, threads, timeout and keep-alive: gunicorn.conf.py.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "dashboard.wsgi:application"]
