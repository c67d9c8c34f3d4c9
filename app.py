"""mergescope dashboard: ``python app.py`` serves http://127.0.0.1:7860 on the built-in demo zoo.

Flags (or environment variables): --host (MERGESCOPE_HOST, default 127.0.0.1), --port (MERGESCOPE_PORT, 7860),
--zoo (MERGESCOPE_ZOO, default assets/demo-zoo), --data-dir (MERGESCOPE_DATA, run history and downloads; default
~/.cache/mergescope), --device (MERGESCOPE_DEVICE: auto, cpu, cuda), --gpu-slots (MERGESCOPE_GPU_SLOTS: jobs
running at once, default 1), --upload-limit-mb (MERGESCOPE_UPLOAD_LIMIT_MB, default 2048).
"""
import argparse
import os
from pathlib import Path

DEMO_ZOO = Path(__file__).resolve().parent / "assets" / "demo-zoo"


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=env("MERGESCOPE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("MERGESCOPE_PORT", "7860")))
    parser.add_argument("--zoo", default=env("MERGESCOPE_ZOO", str(DEMO_ZOO)),
                        help="zoo folder or zoo.json opened at start ('' for none)")
    parser.add_argument("--data-dir", default=env("MERGESCOPE_DATA", str(Path.home() / ".cache" / "mergescope")))
    parser.add_argument("--device", default=env("MERGESCOPE_DEVICE", "auto"))
    parser.add_argument("--gpu-slots", type=int, default=int(env("MERGESCOPE_GPU_SLOTS", "1")))
    parser.add_argument("--upload-limit-mb", type=float, default=float(env("MERGESCOPE_UPLOAD_LIMIT_MB", "2048")))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from dashboard.service import Settings
    from dashboard.ui import create_app, launch

    zoo = args.zoo if args.zoo and Path(args.zoo).exists() else None
    if args.zoo and zoo is None:
        print(f"mergescope: zoo {args.zoo} not found; starting without one (load a zoo in the app)")
    settings = Settings(Path(args.data_dir), device=args.device, upload_limit=int(args.upload_limit_mb * 2**20))
    demo = create_app(settings, zoo, slots=args.gpu_slots)
    launch(demo, args.host, args.port)


if __name__ == "__main__":
    main()
