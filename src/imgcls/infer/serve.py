"""HTTP API and one self-contained web page on top of predict.Predictor (FastAPI + uvicorn).

Owns what faces the network. Every input problem is a 4xx JSON error, never a 5xx:
    413 upload too large (per file, or the whole body) / too many pixels (decompression bomb)
    415 not an image
    400 no file, empty file, too many files, malformed multipart
The model is loaded once; inference runs in a worker thread (never on the event loop) behind
a limiter, so memory stays bounded under load. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgcls.data.preprocess import DEFAULT_MAX_PIXELS
from imgcls.errors import UserError, require_whole
from imgcls.infer.predictor import Predictor
from imgcls.version import __version__

PAGE = Path(__file__).with_name("page.html")
FIELDS = ("file", "files")  # multipart field names that carry photos


@dataclass(frozen=True)
class ServeLimits:
    max_upload_bytes: int = 8 * 1024 * 1024  # per file
    max_files: int = 16  # per request
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height of one upload: the same guard as
    #                                       scan, train and predict (decompression bombs)
    concurrency: int = 2  # inferences at once; the rest wait in line

    def __post_init__(self):
        for name, low in (("max_upload_bytes", 1), ("max_files", 1), ("max_pixels", 0),
                          ("concurrency", 1)):
            require_whole(name, getattr(self, name), low)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(model: str | os.PathLike, limits: ServeLimits = ServeLimits(),
               device: str = "auto") -> FastAPI:
    # (FastAPI reads the endpoints' annotations by name, so its types are imported at the top.)
    predictor = Predictor.from_checkpoint(model, device=device, max_pixels=limits.max_pixels)
    limiter = anyio.CapacityLimiter(limits.concurrency)
    page = PAGE.read_text(encoding="utf-8")
    # No /docs: Swagger UI loads its scripts from a public CDN, a blank page offline. The
    # schema stays at /openapi.json for any OpenAPI viewer.
    app = FastAPI(title="imgcls", version=__version__, docs_url=None, redoc_url=None)
    info = {"classes": predictor.class_names, "model": predictor.meta["model"]["name"],
            "input_size": [predictor.spec.height, predictor.spec.width],
            "preprocess": predictor.spec.to_dict(), "tta": predictor.recommends_tta,
            "limits": limits.__dict__, "imgcls_version": __version__}
    _answer_errors_as_json(app)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    # HEAD answers as GET does, outside the schema: one operation id per route there (a
    # route of both methods gave two operations one id, and FastAPI warned at every start).
    for path, endpoint in (("/", index), ("/health", health)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    @app.get("/info")
    async def get_info():
        return info

    @app.post("/predict")
    async def predict(request: Request):
        datas, names = await _read_uploads(request, limits)
        async with limiter:
            results = await anyio.to_thread.run_sync(_infer, predictor, datas)
        if len(results) == 1 and "error" in results[0]:
            raise ApiError(results[0]["status"], f"{names[0]}: {results[0]['error']}")
        for name, r in zip(names, results):
            r["filename"] = name
            r.pop("status", None)
        return {"predictions": results}

    app.state.predictor = predictor
    return app


def _answer_errors_as_json(app: FastAPI) -> None:
    """Every error is a JSON {"error": ...} with its 4xx status; never an HTML page or a 5xx
    traceback."""
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse({"error": "invalid request"}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # pragma: no cover - a bug, still not a crash
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


async def _read_uploads(request: Request, limits: ServeLimits) -> tuple[list[bytes], list[str]]:
    """The uploaded photos' bytes and names, within every limit, or an ApiError saying which."""
    body_limit = limits.max_files * (limits.max_upload_bytes + 64 * 1024)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > body_limit:
        raise ApiError(413, f"request body over {body_limit} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the photos as multipart/form-data (field 'file')")
    try:
        form = await request.form(max_files=limits.max_files, max_fields=limits.max_files)
    except Exception as exc:  # starlette's MultiPartException/HTTPException, malformed bodies
        msg = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
        if "too many files" in msg.lower():
            raise ApiError(400, f"too many files: at most {limits.max_files} per request")
        raise ApiError(400, f"bad upload: {msg or 'malformed multipart body'}")
    try:
        uploads = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        other = sorted({k for k, _ in uploads if k not in FIELDS})
        if other:  # the README documents 'file' (and 'files'): say so rather than guess
            raise ApiError(400, f"upload field {other[0]!r} is not one of "
                                f"{', '.join(repr(f) for f in FIELDS)}")
        files = [v for _, v in uploads]
        if not files and not list(form.multi_items()):
            raise ApiError(400, "bad upload: the multipart body holds no complete part "
                                "(cut short, or no closing boundary)")
        if not files:
            raise ApiError(400, "no file in the upload (use the field name 'file')")
        if len(files) > limits.max_files:
            raise ApiError(400, f"too many files: at most {limits.max_files} per request")
        datas, names = [], []
        for f in files:
            data = await f.read(limits.max_upload_bytes + 1)
            if len(data) > limits.max_upload_bytes:
                raise ApiError(413, f"{f.filename or 'file'}: over the upload limit of "
                                    f"{limits.max_upload_bytes} bytes")
            if not data:
                raise ApiError(400, f"{f.filename or 'file'}: empty file")
            datas.append(data)
            names.append(f.filename or f"file{len(names)}")
        return datas, names
    finally:
        await form.close()


def _infer(predictor: Predictor, datas: list[bytes]) -> list[dict]:
    """One answer per upload, from Predictor.predict (its preprocessing, checks, batching
    and TTA default); a photo it cannot read gets its error and the status that says why."""
    out = []
    for p in predictor.predict(datas, batch_size=max(1, len(datas))):
        if p.error is None:
            out.append({"class": p.class_name, "probabilities": p.probabilities})
        elif p.error.startswith("too large"):
            out.append({"error": f"image has too many pixels: {p.error}", "status": 413})
        else:
            out.append({"error": f"not a usable image: {p.error}", "status": 415})
    return out


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be served, before saying that it is served."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror} (another server "
                            "there? choose another --port)") from None


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits = ServeLimits(),
          device: str = "auto") -> None:
    import uvicorn

    check_port(host, port)
    app = create_app(model, limits, device)
    logging.getLogger(__name__).info(
        f"imgcls: serving {json.dumps(app.state.predictor.class_names)} on "
        f"http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning",
                limit_concurrency=256, timeout_keep_alive=5)
