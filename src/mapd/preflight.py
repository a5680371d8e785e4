"""Check a run's endpoints before anything runs: keys set, servers answering, models present.

    checks = check_endpoints(cfg)           # one EndpointCheck per endpoint, in config order
    require_endpoints(cfg, checks)          # MapdError naming every failed one

`mapd validate --check` prints every line; `mapd run` runs the check before the exam, so a
missing key or a closed port is found in a second, not after the student's exam. An HTTP
endpoint is asked `GET {base_url}/models` with a short timeout; a local model must be
present (a folder or file that exists, a `package:` model whose package is installed); a
hub id is only looked up in the local hub cache, so an offline machine is told, not failed.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mapd.config import BATCH_OF_HOST, ModelEndpoint, RunConfig, StudentConfig
from mapd.errors import MapdError
from mapd.llm.openai_backend import on_this_machine
from mapd.llm.types import VLLM_INSTALL_HINT

TIMEOUT = 5.0  # seconds for GET /models: a live server answers it in milliseconds


@dataclass(frozen=True)
class EndpointCheck:
    """What was found for one endpoint: `problem` is None when it can be used."""

    role: str  # "student" or "teacher alice"
    where: str  # the base URL or model spec
    found: str
    problem: str | None = None
    fix: str | None = None
    worth_saying: bool = False  # usable, but the user should know (not cached, not listed)

    def line(self) -> str:
        if self.problem is None:
            return f"{self.role} ({self.where}): {self.found}"
        return f"{self.role} ({self.where}): {self.problem}; fix: {self.fix}"


def check_key(role: str, endpoint: ModelEndpoint) -> EndpointCheck | None:
    """A failed check when the key variable the config names is unset, else None."""
    name = endpoint.api_key_env
    if name is None or os.environ.get(name, "").strip():
        return None
    return EndpointCheck(
        role,
        ", ".join(endpoint.base_urls),
        "",
        f"the API key variable {name} is not set",
        f"export {name}=... (or api_key_env: null for a server without keys)",
    )


def opener_for(url: str) -> urllib.request.OpenerDirector:
    """urllib with the proxy that the HTTP client would use for `url` (none when not set)."""
    from mapd.llm.openai_backend import env_proxy

    proxy = env_proxy(url)
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})
    )


def check_http(role: str, endpoint: ModelEndpoint, url: str, timeout: float) -> EndpointCheck:
    """`GET {url}/models`: any answer but a refused key or a web page (a web server at a
    wrong base_url) means the server is there."""
    from mapd.llm.openai_backend import api_key

    opener = opener_for(url)
    headers = {**endpoint.headers, "Authorization": f"Bearer {api_key(endpoint)}"}
    request = urllib.request.Request(url.rstrip("/") + "/models", headers=headers)
    try:
        with opener.open(request, timeout=timeout) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403) and endpoint.api_key_env is None:
            return EndpointCheck(
                role,
                url,
                "",
                f"the server wants an API key (HTTP {exc.code})",
                "export the key and set the endpoint's api_key_env to its variable's name",
            )
        if exc.code in (401, 403):
            return EndpointCheck(
                role,
                url,
                "",
                f"the server refused the key (HTTP {exc.code})",
                f"check the key in {endpoint.api_key_env} and its access to {endpoint.model}",
            )
        path = urlsplit(url).path.rstrip("/")
        if exc.code == 404 and path.endswith("completions"):
            return EndpointCheck(
                role,
                url,
                "",
                "the URL of one call, not the API root (GET /models: HTTP 404)",
                "set base_url to the API root, without /chat/completions",
            )
        if exc.code == 404 and not path and answers(opener, url.rstrip("/") + "/v1", headers):
            return EndpointCheck(
                role,
                url,
                "",
                "no API at the root (GET /models: HTTP 404), but one under /v1",
                f"set base_url to {url.rstrip('/')}/v1",
            )
        if exc.code == 404 and html_page(exc):
            return web_page(role, url, exc.code)
        return EndpointCheck(
            role, url, f"reachable (GET /models: HTTP {exc.code})", worth_saying=exc.code == 404
        )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return EndpointCheck(
            role,
            url,
            "",
            f"not reachable ({reason})",
            "start the server, or correct base_url (it ends in /v1 for most servers)"
            if on_this_machine(urlsplit(url).hostname or "")
            else "check the network (and HTTPS_PROXY or HTTP_PROXY, if a proxy is needed), "
            "that the server is up, and base_url",
        )
    if body.lstrip()[:1] == b"<":  # a web site that answers every path with its page
        return web_page(role, url, 200)
    if others := unlisted(endpoint.model, body):
        found = f"reachable, but {endpoint.model} is not among its models ({others})"
        return EndpointCheck(role, url, found, worth_saying=True)
    return EndpointCheck(role, url, "reachable")


def web_page(role: str, url: str, status: int) -> EndpointCheck:
    """A web server's page where the API should be: summarised, never quoted raw."""
    return EndpointCheck(
        role,
        url,
        "",
        f"GET /models: HTTP {status} (an HTML page, not an API)",
        "correct base_url to the API's root (it ends in /v1 for most servers)",
    )


def html_page(exc: urllib.error.HTTPError) -> bool:
    """Whether the error's body is a web page: a web server, not an API, answered."""
    try:
        start = exc.read(1024).lstrip()[:1]
    except OSError:
        start = b""
    return "html" in exc.headers.get("Content-Type", "") or start == b"<"


def answers(opener: urllib.request.OpenerDirector, url: str, headers: dict[str, str]) -> bool:
    """Whether `GET {url}/models` is answered with 200."""
    try:
        with opener.open(urllib.request.Request(url + "/models", headers=headers), timeout=TIMEOUT):
            return True
    except (urllib.error.URLError, OSError):
        return False


def unlisted(model: str, body: bytes) -> str | None:
    """The server's models when its list does not hold `model` (an empty list is not judged)."""
    try:
        listed = [m.get("id", "") for m in json.loads(body).get("data", [])]
    except (ValueError, AttributeError, TypeError):
        return None
    if not listed or any(m == model or m.endswith("/" + model) for m in listed):
        return None
    if close := difflib.get_close_matches(model, listed, n=1, cutoff=0.5):
        return f"did you mean {close[0]}?"
    return ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")


def check_local(role: str, endpoint: ModelEndpoint) -> EndpointCheck:
    """The in-process model is present: a file or folder, an installed package, a cached hub id."""
    from mapd.llm.model_loading import SPEC_HINT, package_file

    spec = endpoint.model
    if spec.startswith("package:"):
        try:
            return EndpointCheck(role, spec, f"present ({package_file(spec).name})")
        except MapdError as err:
            return EndpointCheck(role, spec, "", err.message, err.hint)
    path = Path(spec).expanduser()
    if path.exists():
        return EndpointCheck(role, spec, "present")
    if spec.endswith(".gguf") or spec.startswith(("/", ".", "~")) or WINDOWS_PATH.match(spec):
        return EndpointCheck(role, spec, "", "cannot load model: no such file or folder", SPEC_HINT)
    found, _ = hub_lookup(spec)
    if found == NO_HUB_ID:
        return EndpointCheck(role, spec, "", found, SPEC_HINT)
    return EndpointCheck(role, spec, found, worth_saying=found != "in the local hub cache")


WINDOWS_PATH = re.compile(r"[A-Za-z]:[\\/]|.*\\")  # C:/models/x, C:\models\x, models\x
NO_HUB_ID = "no such file or folder, and not a hub id (owner/name)"


def hub_status(repo: str) -> str:
    """Whether a hub model is in the local cache; no HTTP request (at most one name lookup)."""
    return hub_lookup(repo)[0]


def hub_lookup(repo: str) -> tuple[str, bool]:
    """What the local hub cache says of `repo`, and whether loading it can work (False: it
    will fail for sure). No HTTP request; at most one name lookup."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from mapd.llm.hub_offline import unresolvable_hub_host

    try:
        validate_repo_id(repo)
    except HFValidationError:  # an Ollama tag (qwen2.5:7b), a revision (org/name@main), ...
        return NO_HUB_ID, False
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return "in the local hub cache", True
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "not in the local hub cache and HF_HUB_OFFLINE is set: loading it will fail", False
    if host := unresolvable_hub_host():
        return (
            f"not in the local hub cache and {host} cannot be resolved: loading it will fail",
            False,
        )
    return "not in the local hub cache: downloaded on first use (needs the network)", True


def on_the_hub(repo: str, timeout: float) -> bool | None:
    """Whether the hub has `repo` (a gated one counts), or None when it cannot tell."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo, timeout=timeout)
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except Exception:  # network, proxy, server trouble: not the user's config
        return None
    return True


def check_batch_api(
    role: str, endpoint: ModelEndpoint, url: str, timeout: float
) -> EndpointCheck | None:
    """A failed check when `GET {url}/batches` (or `/messages/batches`) is 404: the server
    has no batch API (Ollama, vLLM serve). mapd lists a provider's batches before it submits
    (to adopt one a killed run made), so this is the first request a batched run would fail."""
    from mapd.llm.batch_api import ANTHROPIC_VERSION
    from mapd.llm.openai_backend import api_key

    opener = opener_for(url)
    key = api_key(endpoint)
    headers = {**endpoint.headers, "Authorization": f"Bearer {key}", "x-api-key": key}
    headers["anthropic-version"] = ANTHROPIC_VERSION
    route = "/messages/batches" if endpoint.batch_kind == "anthropic" else "/batches"
    request = urllib.request.Request(url.rstrip("/") + route + "?limit=1", headers=headers)
    try:
        with opener.open(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            return EndpointCheck(
                role,
                url,
                "",
                f"no batch API at this URL (GET {route}: HTTP {exc.code})",
                "remove `batch:` from this endpoint to call it live, or check base_url",
            )
    except (urllib.error.URLError, OSError):
        pass  # not reachable: check_http has said so
    return None


def check_endpoint(role: str, endpoint: ModelEndpoint, timeout: float) -> list[EndpointCheck]:
    if endpoint.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        problem = "backend vllm: vllm is not installed"
        return [EndpointCheck(role, endpoint.model, "", problem, VLLM_INSTALL_HINT)]
    if endpoint.backend != "openai":
        return [check_local(role, endpoint)]
    if missing := check_key(role, endpoint):
        return [missing]
    checks = [check_http(role, endpoint, url, timeout) for url in endpoint.base_urls]
    [url] = endpoint.base_urls[:1] or [""]
    known = urlsplit(url).hostname in BATCH_OF_HOST
    if endpoint.batch_kind and not known and checks[0].problem is None:
        checks[0] = check_batch_api(role, endpoint, url, timeout) or checks[0]
    return checks


def trained_student_served(cfg: RunConfig) -> bool:
    """`eval.trained` names a server and the student is trained: that server should be up
    (before training it cannot serve the adapter yet, so it is not asked)."""
    return cfg.eval.trained is not None and (cfg.run_dir / "student" / "manifest.json").exists()


def endpoints_of(
    cfg: RunConfig, student: bool = True, teachers: bool = True, trained: bool = False
) -> list[tuple[str, ModelEndpoint]]:
    chosen = [("student", cfg.student)] if student else []
    if teachers:
        chosen += [(f"teacher {t.name}", t) for t in cfg.teachers]
    if trained and cfg.eval.trained is not None:
        chosen.append(("trained student (eval.trained)", cfg.eval.trained))
    return chosen


def check_endpoints(
    cfg: RunConfig,
    student: bool = True,
    teachers: bool = True,
    training: bool = True,
    trained: bool | None = None,
    timeout: float = TIMEOUT,
) -> list[EndpointCheck]:
    """Every endpoint checked at once (a few threads), results in config order. `training`:
    a student served over HTTP is trained from its weights, loaded here; check those too.
    `trained`: the `eval.trained` server (by default once the student is trained)."""
    if trained is None:
        trained = trained_student_served(cfg)
    chosen = endpoints_of(cfg, student, teachers, trained)
    with ThreadPoolExecutor(max_workers=min(8, len(chosen) or 1)) as pool:
        found = pool.map(lambda pair: check_endpoint(*pair, timeout), chosen)
        checks = [check for checks in found for check in checks]
    if training and cfg.student.backend == "openai":
        checks.append(check_weights(cfg.student))
    return checks


def check_weights(student: StudentConfig, timeout: float = TIMEOUT) -> EndpointCheck:
    """What training of a served student loads: `weights`, else the served model's name. A
    name that is no hub id (an Ollama tag), a hub model that cannot be fetched, or a name the
    hub does not have (vLLM's --served-model-name) fails here, before the teachers are paid,
    not at the train stage."""
    role, spec = "student weights for training", student.trained_from
    fix = (
        "set student.weights to the served model's weights: a hub id (e.g. "
        "HuggingFaceTB/SmolLM2-135M-Instruct), a folder, or a package: file"
    )
    found = check_local(role, student.model_copy(update={"model": spec}))
    if found.problem == NO_HUB_ID:
        return EndpointCheck(role, spec, "", "a server's model name, not weights to train", fix)
    if found.problem is not None or found.found.startswith("present"):
        return found
    status, loadable = hub_lookup(spec)
    if not loadable:
        return EndpointCheck(role, spec, "", status, fix + " (or make the hub reachable)")
    if status != "in the local hub cache" and on_the_hub(spec, timeout) is False:
        return EndpointCheck(role, spec, "", "no such model on the hub", fix)
    return found


def check_before_run(cfg: RunConfig, stages: list[str]) -> list[EndpointCheck]:
    """The endpoints that the stages still to run need (a stage with a manifest is taken as
    finished: a re-run that only builds or reports needs no teacher). A run folder made by
    `mapd import-release` holds the teachers' work and reviews: no teacher is called."""
    from mapd.rundir import RELEASE_MARKER, load_manifest

    to_run = {s for s in stages if load_manifest(cfg.run_dir, s) is None}
    if (cfg.run_dir / RELEASE_MARKER).exists():
        to_run -= {"teach", "review"}
    return check_endpoints(
        cfg,
        student=bool(to_run & {"exam", "train", "eval"}),
        teachers=bool(to_run & {"teach", "review"}),
        training="train" in to_run,
        trained="eval" in to_run and trained_student_served(cfg),
    )


def require_endpoints(checks: list[EndpointCheck], shown: bool = False) -> None:
    """Raise one MapdError naming every endpoint that cannot be used (unless `shown` already)."""
    failed = [c for c in checks if c.problem is not None]
    if not failed:
        return
    lines = "" if shown else "".join(f"\n  {c.line()}" for c in failed)
    raise MapdError(
        f"{len(failed)} of {len(checks)} checks failed{' (above)' if shown else ':'}{lines}",
        "fix them and run again (`mapd validate CONFIG --check` checks without running)",
    )
