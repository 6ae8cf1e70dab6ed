"""Selection-quality benchmark (issue 8): does the MI bound pick the checkpoint a phone probe would pick?

``python -m benchmarks.selection --out DIR [--quick]`` -- see :mod:`benchmarks.selection.run`.
"""
