"""`python -m images`: the image builder's command line."""

from images.cli import app

if __name__ == "__main__":
    app()
