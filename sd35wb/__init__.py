"""Plain-Python logic of SD3.5 Workbench. Nothing in this package imports ComfyUI or torch at
import time, so unit tests, the CLIs and bench scripts use it directly."""
