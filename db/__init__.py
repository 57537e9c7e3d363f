"""The audit database: acceptances of the terms, through SQLAlchemy 2 and Alembic."""
