"""``autoseg serve``: a FastAPI application with a page to upload a CT and browse its segmentation.

The page (``static/``) talks to a small JSON API; slices are PNG images rendered here. Predictions run
in one background thread (:mod:`autoseg.serve.jobs`), so the page stays responsive while a job runs.
Uploads are checked by :mod:`autoseg.serve.security` before anything reads them as an image.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import SimpleITK as sitk
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoseg.errors import AutosegError
from autoseg.inference.model import open_model
from autoseg.inference.outputs import write_prediction
from autoseg.inference.postprocessing import load_postprocessing
from autoseg.inference.predictor import PredictOptions, check_looks_like_ct, linked_label_table, predict_case
from autoseg.inference.uncertainty import load_calibration
from autoseg.layout import CaseOutputs, CheckpointKind, JobFolder, server_lock
from autoseg.io import read_json, read_sitk
from autoseg.serve.jobs import JobStore, Retention, Runner, Worker, new_status, new_token
from autoseg.serve.security import (
    Limits,
    MemoryModel,
    UploadError,
    copy_limited,
    display_name,
    remove_quietly,
    store_upload,
    too_large,
)
from autoseg.serve.slices import (
    HEAT_STOPS,
    LAYERS,
    PLANES,
    UNCERTAINTY_FULL,
    UNCERTAINTY_LEGEND,
    WINDOWS,
    VolumeCache,
    check_layer,
    colour,
    default_view,
    render_slice,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DOWNLOADS = JobFolder.downloads()
PAGE_HEADER = "x-autoseg"
TOKEN_HEADER = "x-autoseg-token"
MAX_LISTED = 1000                     # job tokens one listing request may ask about
PRIVATE = ("token_sha256",)           # status fields never sent to a client
SECURITY_HEADERS = [
    (b"content-security-policy", (b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                  b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``autoseg serve`` needs; ``workdir`` holds the jobs (``<workdir>/jobs/<id>/``)."""

    model_folder: Path
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    folds: tuple[int, ...] | None = None
    checkpoint: CheckpointKind = "final"
    device: str = "cpu"
    limits: Limits = field(default_factory=Limits)
    retention: Retention = field(default_factory=Retention)
    #: A linked run's ROI model (e.g. the liver model for Task08): its folder, archive or ONNX export.
    #: The viewer then predicts the one liver/vessel/tumour map, as ``predict --roi-model`` does.
    roi_model_folder: Path | None = None
    #: ``predict --edge-context``: what the served model was trained with, else the built-in model's
    #: recipe value when the viewer serves it, else 0 (:func:`autoseg.builtin.default_edge_context`).
    edge_context: float = 0.0


@dataclass
class Context:
    """What the routes share: the model, the job store, the worker and the slice cache."""

    config: ServeConfig
    model: Any  # what open_model returns: a training folder, an exported archive or an ONNX export
    store: JobStore
    worker: Worker
    cache: VolumeCache
    memory: MemoryModel  # the model's memory needs, checked against every upload's header
    labels: dict[int, str]  # the classes of the maps the jobs write (a linked run's combined table)
    roi_model: Any = None  # a linked run's ROI model (what open_model returns), or None

    def accept(self, upload: UploadFile) -> tuple[dict[str, Any], str]:
        """Store a received upload as a new queued job: its status and its token (returned once);
        nothing is kept of a refused one."""
        job_id, folder = self.store.new_folder()
        try:
            part = JobFolder(folder).upload_part
            received = copy_limited(upload.file, part, self.config.limits.max_upload)
            if received == 0:
                raise UploadError("the uploaded file is empty", 400, "choose the CT file again")
            stored = store_upload(part, folder, self.config.limits, self.memory)
        except BaseException:
            remove_quietly(folder)
            raise
        token = new_token()
        status = new_status(job_id, token, display_name(upload.filename), stored, received)
        self.store.write(job_id, status)
        return status, token

    def describe(self, status: dict[str, Any]) -> dict[str, Any]:
        """A job's status as the page sees it: with its place in the queue and a time estimate."""
        out = {k: v for k, v in status.items() if k not in PRIVATE}
        if status["state"] in ("queued", "running"):
            out["position"] = self.worker.position(status["id"])
            out["estimate_s"] = self.worker.estimate(status)
        return out

    def done_folder(self, job_id: str, token: str) -> tuple[Path, dict[str, Any]]:
        """The folder and status of a finished job the token opens (409 while it is not done)."""
        status = self.store.authorised(job_id, token)
        if status["state"] != "done":
            raise UploadError(f"result is not ready (state: {status['state']})", 409,
                              "wait until the prediction has finished")
        return self.store.folder(job_id), status


def check_intensities(image: Path) -> None:
    """Refuse an image whose intensities cannot be CT in HU before preprocessing it: reading it costs
    about its own size in memory, preprocessing several times that."""
    volume = read_sitk(image)
    voxels = sitk.GetArrayViewFromImage(volume)
    check_looks_like_ct(float(voxels.min()), float(voxels.max()), image)


def prediction_runner(model: Any, options: PredictOptions) -> Runner:
    """Predict with the folds' ensemble into the job folder's label map and report."""
    def run(folder: Path, image: Path, name: str) -> dict[str, Any]:
        if model.plans.is_ct:
            check_intensities(image)
        job = JobFolder(folder)
        result = predict_case(model, job.OUTPUT_CASE, image, options)
        result.report = dataclasses.replace(result.report, input=name)  # the upload's name, not the stored file's
        return write_prediction(result, job.outputs, report_path=job.report).to_dict()
    return run


class Guard:
    """ASGI middleware: refuses request bodies over the upload limit (plus room for the multipart
    framing) while they stream in, before they reach the disk, and adds the
    security headers (content security policy, no sniffing, no framing) to every response."""

    def __init__(self, app: ASGIApp, max_upload: int, form_room: int = 1 << 20):
        self.app, self.max_upload, self.max_body = app, max_upload, max_upload + form_room

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await error_response(too_large(self.max_upload))(scope, receive, send_secure)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise too_large(self.max_upload)
            return message

        await self.app(scope, limited, send_secure)


def error_response(exc: AutosegError) -> JSONResponse:
    status = exc.status if isinstance(exc, UploadError) else 400
    return JSONResponse({"error": exc._message, "fix": exc.fix}, status_code=status)


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def job_token(request: Request) -> str:
    """The job token of a request: the header the page's scripts send, or ``?token=`` for images and
    download links (which cannot send headers)."""
    return request.headers.get(TOKEN_HEADER) or request.query_params.get("token", "")


def from_page(request: Request) -> None:
    """Changes must come from the page (a custom header a cross-site form or link cannot send)."""
    if request.headers.get(PAGE_HEADER) != "1":
        raise UploadError("request did not come from the autoseg page", 403,
                          f"send the header '{PAGE_HEADER}: 1' (the page does)")


Ctx = Annotated[Context, Depends(context)]
Token = Annotated[str, Depends(job_token)]
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})


@router.get("/api/info")
def info(ctx: Ctx) -> dict[str, Any]:
    plans, limits = ctx.model.plans, ctx.config.limits
    roi = ctx.roi_model.plans.dataset_name if ctx.roi_model is not None else None
    return {"dataset": plans.dataset_name, "network": plans.configuration, "folds": sorted(ctx.model.checkpoints),
            "roi_model": roi,
            "classes": [{"id": k, "name": n, "colour": colour(k)} for k, n in sorted(ctx.labels.items()) if k],
            "windows": list(WINDOWS), "planes": list(PLANES), "layers": list(LAYERS),
            "uncertainty": {"legend": UNCERTAINTY_LEGEND, "full_at": UNCERTAINTY_FULL,
                            "stops": [{"at": x, "colour": "#{:02x}{:02x}{:02x}".format(*c)} for x, c in HEAT_STOPS]},
            "accept": ".nii,.nii.gz,.nrrd,.mha,.zip",
            "limits": {"max_upload_bytes": limits.max_upload, "max_decompressed_bytes": limits.max_decompressed,
                       "max_queue": limits.max_queue, "max_memory_bytes": limits.max_memory,
                       "keep_jobs": ctx.config.retention.keep, "job_ttl_s": ctx.config.retention.ttl_s}}


@router.post("/api/jobs/mine", dependencies=[Depends(from_page)])
def my_jobs(body: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """The statuses of the jobs whose tokens the page holds (``{"tokens": {id: token}}``), newest
    first, and the ids it should forget (deleted, or a wrong token). There is no list of all jobs."""
    tokens = body.get("tokens")
    if not isinstance(tokens, dict) or len(tokens) > MAX_LISTED:
        raise UploadError(f"expected {{\"tokens\": {{id: token}}}} with at most {MAX_LISTED} jobs", 400,
                          "send the job ids and tokens returned by the uploads")
    found, gone = [], []
    for job_id, token in tokens.items():
        try:
            found.append(ctx.describe(ctx.store.authorised(str(job_id), str(token))))
        except UploadError:
            gone.append(str(job_id)[:40])
    return {"jobs": sorted(found, key=lambda s: -s["created"]), "gone": gone}


async def receive_upload(request: Request, ctx: Ctx) -> tuple[dict[str, Any], str]:
    """Read the multipart body and store its file as a job (see :meth:`Context.accept`)."""
    try:
        async with request.form(max_files=1, max_fields=4, max_part_size=64 * 1024) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise UploadError("the request holds no file", 400, "send the image as the form field 'file'")
            return await run_in_threadpool(ctx.accept, file)
    except MultiPartException as exc:
        raise UploadError(f"malformed upload ({exc.message})", 400, "upload the file from the page") from None


@router.post("/api/jobs", status_code=202, dependencies=[Depends(from_page)])
async def upload(request: Request, ctx: Ctx) -> dict[str, Any]:
    ctx.worker.reserve()  # a place in the queue before the body is read: concurrent uploads cannot overfill it
    try:
        status, token = await receive_upload(request, ctx)
    except BaseException:
        ctx.worker.release()
        raise
    ctx.worker.submit(status["id"])
    log.info("job %s (%s): queued, %d bytes", status["id"], status["name"], status["input"]["bytes"])
    return {**ctx.describe(status), "token": token}


@router.get("/api/jobs/{job_id}")
def job(job_id: str, token: Token, ctx: Ctx) -> dict[str, Any]:
    return ctx.describe(ctx.store.authorised(job_id, token))


@router.delete("/api/jobs/{job_id}", dependencies=[Depends(from_page)])
def delete(job_id: str, token: Token, ctx: Ctx) -> dict[str, Any]:
    ctx.store.authorised(job_id, token)
    ctx.worker.delete(job_id)
    ctx.cache.drop(job_id)
    return {"deleted": job_id}


@router.get("/api/jobs/{job_id}/report")
def report(job_id: str, token: Token, ctx: Ctx) -> dict[str, Any]:
    folder, _ = ctx.done_folder(job_id, token)
    return dict(read_json(JobFolder(folder).report))


@router.get("/api/jobs/{job_id}/files/{name}")
def download(job_id: str, name: str, token: Token, ctx: Ctx) -> FileResponse:
    folder, status = ctx.done_folder(job_id, token)
    # only known names: the label map, the report, the uncertainty map and the surface meshes the
    # job's own report lists (names the server wrote, from the model's class names made safe for a file name)
    job_report = dict(read_json(JobFolder(folder).report))
    meshes = job_report.get("meshes") or {}
    uncertainty = JobFolder(folder).outputs.uncertainty.name
    listed = (job_report.get("uncertainty") or {}).get("file") == uncertainty
    known = DOWNLOADS + ((uncertainty,) if listed else ()) + tuple(
        m for m in meshes.values() if isinstance(m, str) and Path(m).name == m and m.endswith(CaseOutputs.MESH_ENDING))
    if name not in known:
        raise UploadError(f"no download named '{name[:40]}'", 404, f"use one of {', '.join(known)}")
    stem = status["name"].split(".")[0] or "autoseg"
    media = {".gz": "application/gzip", ".stl": "model/stl"}.get(Path(name).suffix, "application/json")
    return FileResponse(folder / name, filename=f"{stem}_{name}", media_type=media)


@router.get("/api/jobs/{job_id}/slices/{plane}/{index}.png")
def slice_png(job_id: str, plane: str, index: int, token: Token, ctx: Ctx, window: str = "abdomen",
              opacity: float = 0.5, classes: str = "", layer: str = "labels") -> Response:
    folder, status = ctx.done_folder(job_id, token)
    check_layer(layer)
    try:
        chosen = tuple(int(c) for c in classes.split(",") if c.strip())
    except ValueError:
        raise UploadError("classes must be label numbers separated by commas", 400, "e.g. classes=1,2") from None
    outputs = JobFolder(folder).outputs
    volume = ctx.cache.get(job_id, folder / status["input"]["file"], outputs.labels,
                           outputs.uncertainty if layer == "uncertainty" else None)
    png = render_slice(volume, plane, index, window, opacity, chosen, layer)
    return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})


def allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: only loopback names when bound to loopback (stops DNS rebinding)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return ["127.0.0.1", "localhost", "::1", "[::1]", host] if loopback else ["*"]


def create_app(config: ServeConfig, runner: Runner | None = None, model: Any = None, roi_model: Any = None) -> FastAPI:
    """The application; ``model`` (and a linked run's ``roi_model``) are opened from the config unless
    given, ``runner`` replaces the ensemble prediction (tests use it to hold a job)."""
    model = model or open_model(config.model_folder, config.folds, config.checkpoint)
    if roi_model is None and config.roi_model_folder is not None:
        roi_model = open_model(config.roi_model_folder)
    store = JobStore(config.workdir / "jobs")
    store.claim(server_lock(config.workdir))
    cache = VolumeCache()
    # as `autoseg predict --meshes --uncertainty [--roi-model]` does: the model's post-processing decided
    # from cross-validation, the surface meshes to download, the uncertainty map with the model's
    # calibration (T = 1 without one) and, with a ROI model, the one map of its organ and the model's classes
    options = PredictOptions(device=config.device, outputs=("meshes", "uncertainty"), edge_context=config.edge_context,
                             postprocessing=load_postprocessing(model), calibration=load_calibration(model),
                             roi_model=roi_model,
                             roi_postprocessing=load_postprocessing(roi_model) if roi_model is not None else None)
    worker = Worker(store, runner or prediction_runner(model, options),
                    after=lambda folder: default_view(JobFolder(folder).outputs.labels),
                    max_queue=config.limits.max_queue, retention=config.retention, forget=cache.drop)
    plans = model.plans
    labels = linked_label_table(roi_model.plans.labels, plans.labels) if roi_model is not None else dict(plans.labels)
    ctx = Context(config, model, store, worker, cache,
                  MemoryModel(tuple(float(s) for s in plans.target_spacing), plans.num_classes), labels, roi_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()
        store.release()

    app = FastAPI(title="autoseg", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(AutosegError, lambda request, exc: error_response(exc))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(config.host))
    app.add_middleware(Guard, max_upload=config.limits.max_upload)
    return app


def serve(config: ServeConfig, model: Any = None, roi_model: Any = None) -> None:
    """Run the server in this process until interrupted (one process: the queue lives in memory)."""
    import uvicorn

    app = create_app(config, model=model, roi_model=roi_model)
    if "*" in allowed_hosts(config.host):
        log.warning("listening on %s: anyone who can reach this machine can upload and see results "
                    "(there is no login)", config.host)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"autoseg serve: open http://{host}:{config.port}/  (results in {config.workdir}; Ctrl+C stops)")
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=False)
