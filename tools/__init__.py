"""Wattshare host tools: board/meter configuration, meter simulator, build and demo."""
