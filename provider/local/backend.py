"""The local backend: functions run as processes on the provider's machine.

`LocalBackend` implements `provider.backend.ProviderBackend`. It keeps the
deployed functions in memory and in `store.FunctionStore`, runs classic-mode
functions through `classic` (one process per request) and http-mode ones
through `http_mode` (one supervised server process each). On start it loads
the stored functions and starts the http-mode processes again.

There is one namespace, `openfaas-fn`, and no secret store. `limits`,
`requests`, `constraints` and `readOnlyRootFilesystem` are stored and
reported back, but not enforced. `image` is stored and never pulled.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiohttp

from faashub import __version__, names
from faashub.names import FunctionRef
from faashub.settings import LocalProviderSettings
from provider.backend import (
    FunctionExists,
    FunctionNotFound,
    InvalidRequest,
    Invocation,
    InvocationResponse,
    ProviderStartError,
    StorageError,
)
from provider.local import classic, definition
from provider.local.definition import FunctionSpec
from provider.local.http_mode import HttpFunction
from provider.local.processes import ProcessTracker
from provider.local.store import FunctionStore, StoredFunction
from provider.types import FunctionDeployment, FunctionStatus, ProviderInfo, VersionInfo

logger = logging.getLogger(__name__)

PROVIDER_NAME: Final = "faashub-local"
ORCHESTRATION: Final = "local"


@dataclass(slots=True)
class LocalFunction:
    """A deployed function: its definition, its process if any, its counters."""

    spec: FunctionSpec
    stored: StoredFunction
    http: HttpFunction | None = None
    invocation_count: int = 0

    def status(self) -> FunctionStatus:
        """Return the FunctionStatus that the API reports for this function."""
        fields = self.stored.deployment.model_dump(by_alias=False, exclude={"service"})
        fields["namespace"] = self.spec.namespace
        return FunctionStatus(
            name=self.spec.name,
            **fields,
            invocation_count=self.invocation_count,
            replicas=1,
            available_replicas=1 if self.http is None or self.http.available else 0,
            created_at=self.stored.created_at,
        )


class LocalBackend:
    """Deploys and invokes functions as processes on this machine."""

    def __init__(self, settings: LocalProviderSettings) -> None:
        self._settings = settings
        self._store = FunctionStore(settings.state_dir)
        self._functions: dict[str, LocalFunction] = {}
        self._changes = asyncio.Lock()
        self._tracker = ProcessTracker()
        self._session: aiohttp.ClientSession | None = None
        self._ready = False

    async def start(self) -> None:
        """Load the stored functions and start the http-mode processes."""
        try:
            loaded = await asyncio.to_thread(self._store.load_all)
        except StorageError as exc:
            raise ProviderStartError(str(exc)) from exc
        # NB: no connection limit, because each in-flight call to an http-mode
        # function uses one connection for as long as the function runs.
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=0),
        )
        for path, stored in loaded:
            try:
                spec = self._build_spec(stored.deployment)
            except (InvalidRequest, ValueError) as exc:
                logger.warning(
                    "skipped invalid function file: %s",
                    exc,
                    extra={"ctx": {"path": str(path)}},
                )
                continue
            self._functions[spec.name] = self._activate(spec, stored)
        self._ready = True
        logger.info(
            "local provider started",
            extra={
                "ctx": {
                    "functions": len(self._functions),
                    "state_dir": str(self._settings.state_dir),
                }
            },
        )

    async def stop(self) -> None:
        """Stop every function process and close the HTTP client."""
        self._ready = False
        servers = [function.http for function in self._functions.values()]
        await asyncio.gather(*(server.stop() for server in servers if server))
        await self._tracker.kill_all()
        if self._session is not None:
            await self._session.close()
            self._session = None
        logger.info("local provider stopped")

    def is_ready(self) -> bool:
        """Return whether the stored functions are loaded and no stop has begun."""
        return self._ready

    async def list_functions(self, namespace: str) -> list[FunctionStatus]:
        """Return the status of every deployed function, sorted by name."""
        definition.resolve_namespace(namespace)
        return [self._functions[name].status() for name in sorted(self._functions)]

    async def get_function(self, name: str, namespace: str) -> FunctionStatus:
        """Return one function's status, or raise FunctionNotFound."""
        return self._lookup(name, namespace).status()

    async def create_function(self, deployment: FunctionDeployment) -> None:
        """Store and start a new function; raise FunctionExists if it is deployed."""
        spec = self._build_spec(deployment)
        async with self._changes:
            if spec.name in self._functions:
                raise FunctionExists(
                    f"Function {spec.name!r} already exists in namespace "
                    f"{spec.namespace!r}. To change it, update it with PUT "
                    "/system/functions ('faashub deploy' and 'faas-cli deploy' "
                    "do that)."
                )
            stored = StoredFunction(
                deployment=_with_namespace(deployment, spec.namespace),
                created_at=datetime.now(UTC),
            )
            await asyncio.to_thread(self._store.save, stored)
            self._functions[spec.name] = self._activate(spec, stored)
        logger.info(
            "function deployed",
            extra={"ctx": {"function": spec.ref, "mode": spec.mode}},
        )

    async def update_function(self, deployment: FunctionDeployment) -> None:
        """Replace a function's definition and restart its server process, if any."""
        spec = self._build_spec(deployment)
        async with self._changes:
            current = self._lookup(spec.name, spec.namespace)
            stored = StoredFunction(
                deployment=_with_namespace(deployment, spec.namespace),
                created_at=current.stored.created_at,
            )
            await asyncio.to_thread(self._store.save, stored)
            if current.http is not None:
                await current.http.stop()
            replacement = self._activate(spec, stored)
            replacement.invocation_count = current.invocation_count
            self._functions[spec.name] = replacement
        logger.info(
            "function updated",
            extra={"ctx": {"function": spec.ref, "mode": spec.mode}},
        )

    async def delete_function(self, name: str, namespace: str) -> None:
        """Remove a function's file and stop its server process, if any."""
        async with self._changes:
            current = self._lookup(name, namespace)
            await asyncio.to_thread(
                self._store.delete, current.spec.name, current.spec.namespace
            )
            del self._functions[current.spec.name]
            if current.http is not None:
                await current.http.stop()
        logger.info("function deleted", extra={"ctx": {"function": current.spec.ref}})

    async def list_namespaces(self) -> list[str]:
        """Return the one namespace of the local provider."""
        return [definition.NAMESPACE]

    def info(self) -> ProviderInfo:
        """Return the provider's name, orchestration and faashub release."""
        return ProviderInfo(
            provider=PROVIDER_NAME,
            orchestration=ORCHESTRATION,
            version=VersionInfo(release=__version__),
        )

    @contextlib.asynccontextmanager
    async def invoke(self, invocation: Invocation) -> AsyncIterator[InvocationResponse]:
        """Run `invocation` in classic mode or proxy it to the http-mode process."""
        function = self._lookup_ref(invocation.function)
        function.invocation_count += 1
        if function.http is None:
            yield await classic.run(function.spec, invocation, tracker=self._tracker)
        else:
            async with function.http.forward(invocation) as response:
                yield response

    def _build_spec(self, deployment: FunctionDeployment) -> FunctionSpec:
        return definition.build_spec(
            deployment, default_exec_timeout_s=self._settings.exec_timeout_s
        )

    def _activate(self, spec: FunctionSpec, stored: StoredFunction) -> LocalFunction:
        """Wrap a stored function for serving, starting its process in http mode."""
        function = LocalFunction(spec=spec, stored=stored)
        if spec.mode == "http":
            assert self._session is not None, "start() creates the session first"
            function.http = HttpFunction(
                spec,
                session=self._session,
                start_timeout_s=self._settings.http_start_timeout_s,
            )
            function.http.start()
        return function

    def _lookup(self, name: str, namespace: str) -> LocalFunction:
        """Return a deployed function; raise InvalidRequest or FunctionNotFound."""
        namespace = definition.resolve_namespace(namespace)
        names.validate_label(name)
        return self._lookup_ref(FunctionRef(name, namespace))

    def _lookup_ref(self, ref: FunctionRef) -> LocalFunction:
        function = self._functions.get(ref.name)
        if function is None or ref.namespace != function.spec.namespace:
            raise FunctionNotFound(
                f"Function {ref.name!r} not found in namespace {ref.namespace!r}. "
                "Deploy it first, or list the deployed functions with GET "
                "/system/functions."
            )
        return function


def _with_namespace(
    deployment: FunctionDeployment, namespace: str
) -> FunctionDeployment:
    """Return `deployment` with its namespace filled in, as it is stored."""
    return deployment.model_copy(update={"namespace": namespace})
