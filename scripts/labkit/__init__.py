"""The local lab: Docker engine, locally built images, and a small site of systemd hosts."""
