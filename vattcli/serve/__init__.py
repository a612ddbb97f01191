"""``vatt serve``: an HTTP API and one web page over a retrieval index (issue 11, "A web page").

``service`` answers queries (the model loaded once, text into S_vt, a video or audio file into S_va, as
``vatt retrieve`` does), ``uploads`` streams a query file to a temporary file under a size limit, ``app`` is the
Starlette application (the page, ``/api/*``, thumbnails and the indexed media files by id only). Starlette and uvicorn
come with the ``serve`` extra and are imported only here, never by the rest of the package.
"""
