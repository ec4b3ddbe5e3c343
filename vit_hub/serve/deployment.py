"""vit-serve's two Ray Serve deployments (imported only where Ray Serve runs):

- `ModelServer`: each replica loads the model once, from the cache and offline (the
  caller prepared it), reads each request's image on a thread (`http.read_image`) and
  runs the images of requests that arrive together as one batch (`@serve.batch`, up to
  max_batch images or batch_wait_s), counting the batch sizes it ran (`stats`).
- `Ingress`: the HTTP API (FastAPI). It checks each request (type, size, parameters)
  before any byte goes to a model replica, and answers every problem as JSON
  {"error": ...} with its status. When a model replica dies (killed, out of memory),
  Ray Serve starts a new one and routes requests to the live ones; a request the death
  cuts off, or that no replica answers within timeout_s, gets a 503 that says to retry,
  never a hang, and the ingress keeps answering meanwhile.
"""

import asyncio
import os

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException

from vit_hub.cluster import load_in_worker, register_in_worker
from vit_hub.errors import RequestError
from vit_hub.serve import http

HEALTH_TIMEOUT_S = 5.0


@serve.deployment(name="ModelServer", health_check_period_s=2.0,
                  health_check_timeout_s=30.0, graceful_shutdown_wait_loop_s=0.2,
                  graceful_shutdown_timeout_s=5.0)
class ModelServer:
    def __init__(self, *, registration, cache_dir, runtime, precision, min_cosine, threads,
                 max_batch, batch_wait_s, max_pixels):
        """`registration`: `cluster.registration` of the model (replicas are fresh
        processes: the caller's registered models are not known there)."""
        from vit_hub.catalogue import get_entry

        register_in_worker(**registration)
        self.name = registration["model"]
        self.image_size = get_entry(self.name).image_size
        self.max_pixels = max_pixels
        self.predict, _, _ = load_in_worker(self.name, cache_dir, runtime, precision,
                                            min_cosine, threads)
        self.predict_batch.set_max_batch_size(max_batch)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.batches, self.images, self.largest = 0, 0, 0

    async def answer(self, data):
        """The model's output (numpy, one image's row) for the image file `data`, or
        {"status", "error"} for bytes that are not a readable image or are too large."""
        try:
            image = await asyncio.to_thread(http.read_image, data, self.image_size,
                                            self.max_pixels)
        except RequestError as err:
            return {"status": err.status, "error": str(err)}
        return await self.predict_batch(image)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def predict_batch(self, images):
        """One model call for the images of requests that arrived together (the batch
        size and wait are set per deployment in __init__). On a thread: the replica
        keeps taking requests for the next batch meanwhile."""
        self.batches += 1
        self.images += len(images)
        self.largest = max(self.largest, len(images))
        outputs = await asyncio.to_thread(self.predict, np.stack(images))
        return list(np.asarray(outputs, np.float32))

    def stats(self):
        """This replica's batches: how many, how many images, the largest."""
        return {"pid": os.getpid(), "batches": self.batches, "images": self.images,
                "largest_batch": self.largest,
                "mean_batch": self.images / self.batches if self.batches else 0.0}

    def ready(self):
        return True


api = FastAPI(title="vit-serve", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(HTTPException)
async def _no_route(request, exc):
    """404 and 405 (and any other framework refusal) as JSON {"error": ...}."""
    if exc.status_code in (404, 405):
        message = http.no_route(request.method, request.url.path, exc.status_code)
    else:
        message = str(exc.detail)
    return _error(exc.status_code, message, exc.headers)


def _error(status, message, headers=None):
    return JSONResponse(http.error_body(message), status_code=status, headers=headers)


async def _awaited(response):
    """(a DeploymentResponse as a coroutine, for asyncio.wait_for)"""
    return await response


def _unavailable(reason, timeout_s=None):
    return _error(http.UNAVAILABLE, http.unavailable(reason, timeout_s),
                  headers={"Retry-After": "1"})


# (Everything the class uses is defined above it: @serve.ingress serializes the class.)
@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0},
                  graceful_shutdown_wait_loop_s=0.2, graceful_shutdown_timeout_s=5.0)
@serve.ingress(api)
class Ingress:
    def __init__(self, model_server, description, max_bytes, timeout_s):
        """`model_server`: the ModelServer deployment's handle; `description`: what
        GET /v1/model answers; `timeout_s`: the longest a request waits for a model
        replica (one that neither answers nor dies within it costs a 503, not a hang)."""
        self.model_server, self.description = model_server, description
        self.max_bytes, self.timeout_s = max_bytes, timeout_s

    @api.get("/v1/model")
    def model(self):
        return self.description

    @api.post("/v1/embed")
    async def embed(self, request: Request):
        return await self._answer(request, lambda row: {"features": row.tolist()})

    @api.post("/v1/classify")
    async def classify(self, request: Request, top_k: str | None = None):
        try:
            http.check_classifier(self.description)
            k = http.parse_top_k(top_k, self.description["output_dim"])
        except RequestError as err:
            return _error(err.status, str(err))
        return await self._answer(request, lambda row: {"labels": http.labels(row, k)})

    @api.get("/v1/stats")
    async def stats(self):
        """The batch sizes of the replica that answers."""
        return await self._call(self.model_server.stats.remote(), JSONResponse,
                                self.timeout_s)

    @api.get("/healthz")
    async def healthz(self):
        """200 when a model replica answers within HEALTH_TIMEOUT_S, else 503."""
        return await self._call(self.model_server.ready.remote(),
                                lambda _: JSONResponse({"status": "ok"}), HEALTH_TIMEOUT_S)

    async def _answer(self, request, shape):
        """The checked body to a model replica, its output as `shape(row)` says."""
        try:
            http.check_content_type(request.headers.get("content-type"))
            http.check_declared_length(request.headers.get("content-length"),
                                       self.max_bytes)
            data = await self._body(request)
        except RequestError as err:
            return _error(err.status, str(err))
        return await self._call(self.model_server.answer.remote(data),
                                lambda out: _error(out["status"], out["error"])
                                if isinstance(out, dict) else JSONResponse(shape(out)),
                                self.timeout_s)

    async def _body(self, request):
        """The body, read no further than max_bytes (a chunked upload has no length)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                http.check_body(size, self.max_bytes)
            chunks.append(chunk)
        http.check_body(size, self.max_bytes)
        return b"".join(chunks)

    async def _call(self, response, respond, timeout_s):
        """`respond(result)` of a model replica's call; a 503 that says to retry when
        the replica died or did not answer within `timeout_s`."""
        try:
            result = await asyncio.wait_for(_awaited(response), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            return _unavailable("busy, hung, or restarting", timeout_s)
        except (RayActorError, RayServeException) as err:
            return _unavailable(f"{type(err).__name__}: the replica died or is restarting")
        except RayTaskError as err:  # a fault of vit-serve's, not of the request
            cause = getattr(err, "cause", err)
            return _error(500, f"vit-serve failed on this request ({type(cause).__name__}: "
                          f"{cause}); please report it with the image.")
        return respond(result)
