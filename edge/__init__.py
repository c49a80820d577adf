"""The ASGI edge: HTTP and WebSocket handling around GraphQL, including the fast paths."""
