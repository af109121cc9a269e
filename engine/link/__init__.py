"""The link between the window and the engine: messages, frames, sockets and the client side (torch-free)."""
