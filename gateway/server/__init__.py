"""The HTTP surface: the ASGI app and its lifespan, the route table, the admin API, uvicorn."""
