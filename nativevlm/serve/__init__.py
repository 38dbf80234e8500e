"""Serving: the OpenAI-compatible API (api.py), image intake rules (media.py), the decoupled vision server
(vision_worker.py) and the Gradio demo (ui.py)."""
