# The taskqueue service image: web (gunicorn), worker and reaper run from it with different commands.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY manage.py ./
COPY taskqueue_project ./taskqueue_project
COPY queueapp ./queueapp
COPY workers ./workers
# Bytecode compiled once here: PYTHONDONTWRITEBYTECODE keeps processes from writing it, so without
# this every start (each worker, reap_stale from cron) compiled the project's modules again, 60 ms.
RUN SECRET_KEY=build DATABASE_URL=postgres://build@localhost/build python manage.py collectstatic --noinput \
    && python -m compileall -q manage.py taskqueue_project queueapp workers \
    && useradd --system --uid 1000 taskqueue
USER taskqueue
EXPOSE 8000
# The web service (compose runs this too); its settings are in taskqueue_project/gunicorn_conf.py.
CMD ["gunicorn", "--config", "python:taskqueue_project.gunicorn_conf", "taskqueue_project.wsgi"]
