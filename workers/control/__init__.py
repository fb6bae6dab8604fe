"""Control-plane tasks: Django-aware, run by `tailor worker control` beside the database."""
