"""``python -m onnxopt``."""

from onnxopt.cli import main

if __name__ == "__main__":
    main()
