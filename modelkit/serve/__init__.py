"""`modelkit serve`: an OpenAI-compatible HTTP server over a loaded model (docs/serving.md).

Needs the ``serve`` extra (Starlette and uvicorn): ``pip install 'modelkit[serve]'``.
"""
