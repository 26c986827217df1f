"""The Gradio app: `app.py` assembles one module per tab; see its docstring for the map."""
