"""Draw in the browser: a page that recognises and retrieves drawings as they are drawn.

`python -m webapp --model DIR [--index DIR]` (or `make serve`) serves the page and its JSON API
on 127.0.0.1:8000 with FastAPI on uvicorn. Drawings go through the exported model's serving
contract (serving.model), rendered from strokes by serving.strokes, so the page answers what a
batch job would answer for the same strokes.

    inputs.py   request bodies (strokes JSON, PNG) -> model inputs, with the limits; 4xx on bad input
    service.py  the model and index: classify, search, describe, thumbnails (no HTTP here)
    app.py      the FastAPI app: routes, JSON errors, the body-size limit, the static page
    static/     the page: plain HTML, CSS and JavaScript (no build step, no CDN)
"""
