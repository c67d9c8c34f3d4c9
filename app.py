"""mergescope dashboard entry point (placeholder until the dashboard lands): python app.py"""
import argparse

import gradio as gr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    with gr.Blocks(title="mergescope") as demo:
        gr.Markdown("# mergescope\nThe dashboard is under construction; use `python -m merging` meanwhile.")
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
