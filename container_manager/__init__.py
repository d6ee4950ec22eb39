"""Run jobs as containers and keep their whole lifecycle in the Django database."""
