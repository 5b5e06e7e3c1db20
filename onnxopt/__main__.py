"""``python -m onnxopt``."""

from onnxopt._signals import main

if __name__ == "__main__":
    main()
