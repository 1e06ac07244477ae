"""The worker runtime: claims tasks from PostgreSQL and runs them. No HTTP, no admin."""
