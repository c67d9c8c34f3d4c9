"""mergescope's Gradio dashboard: a thin layer over :mod:`merging`.

figures (engine tables → plotly), jobs (background queue with a GPU concurrency limit and cooperative cancel),
history (SQLite run history), service (server-side session store and handlers as plain functions), widgets
(Gradio components from parameter specs), guide (the walkthrough text) and ui (the gr.Blocks assembly).
"""
