"""The local backend: functions run as processes on the provider's machine.

`LocalBackend` implements `provider.backend.ProviderBackend`. It keeps the
deployed functions in memory and in `store.FunctionStore`, runs classic-mode
functions through `classic` (one process per request) and http-mode ones
through `http_mode` (one supervised server process per replica). On start it
loads the stored functions, writes their secret files again and starts the
http-mode replicas.

There is one namespace, `openfaas-fn`; any other is NamespaceNotFound.
Secrets live in `secrets.SecretStore`, and each function that names secrets
reads copies from its own folder. Function output goes to
`function_logs.LogStore`. `limits`, `requests`, `constraints` and
`readOnlyRootFilesystem` are stored and reported back, but not enforced.
`image` is stored and never pulled.

Replicas: an http-mode function runs one process per replica. A classic
function starts a process per request whatever its replica count, which is
stored and reported only. A call to a function scaled to zero, in either mode,
first scales it to one replica (scale from zero).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiohttp

from faashub import __version__, http_sessions, names
from faashub.names import FunctionRef
from faashub.settings import LocalProviderSettings
from provider.backend import (
    NO_ENDPOINTS,
    FunctionEndpoints,
    FunctionExists,
    FunctionNotFound,
    InvalidRequest,
    Invocation,
    InvocationResponse,
    NamespaceNotFound,
    ProviderStartError,
    SecretExists,
    SecretInUse,
    SecretNotFound,
    StorageError,
    secret_in_use_message,
)
from provider.local import classic, definition
from provider.local.definition import FunctionSpec
from provider.local.function_logs import FunctionLog, LogReader, LogStore
from provider.local.http_mode import HttpFunction
from provider.local.processes import ProcessTracker
from provider.local.secrets import SecretStore
from provider.local.store import FunctionStore, StoredFunction
from provider.types import (
    FunctionDeployment,
    FunctionStatus,
    LogRequest,
    ProviderInfo,
    Secret,
    VersionInfo,
)

logger = logging.getLogger(__name__)

PROVIDER_NAME: Final = "faashub-local"
ORCHESTRATION: Final = "local"
DEFAULT_REPLICAS: Final = 1


@dataclass(slots=True)
class LocalFunction:
    """A deployed function: its definition, its processes if any, its counters."""

    spec: FunctionSpec
    stored: StoredFunction
    log: FunctionLog
    http: HttpFunction | None = None
    invocation_count: int = 0
    removed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the function is deleted; its running classic calls end."""

    @property
    def ref(self) -> FunctionRef:
        return FunctionRef(self.spec.name, self.spec.namespace)

    @property
    def replicas(self) -> int:
        """The desired replicas. `_activate` always sets the stored count."""
        return self.stored.replicas or 0

    def status(self) -> FunctionStatus:
        """Return the FunctionStatus that the API reports for this function."""
        fields = self.stored.deployment.model_dump(by_alias=False, exclude={"service"})
        fields["namespace"] = self.spec.namespace
        # A classic function has no process between requests, so each replica
        # it is scaled to counts as available.
        available = self.replicas if self.http is None else self.http.available_replicas
        return FunctionStatus(
            name=self.spec.name,
            **fields,
            invocation_count=self.invocation_count,
            replicas=self.replicas,
            available_replicas=available,
            created_at=self.stored.created_at,
        )


class LocalBackend:
    """Deploys and invokes functions as processes on this machine."""

    def __init__(self, settings: LocalProviderSettings) -> None:
        self._settings = settings
        self._store = FunctionStore(settings.state_dir)
        self._secrets = SecretStore(settings.state_dir)
        self._logs = LogStore(
            settings.state_dir,
            max_file_bytes=settings.log_max_file_bytes,
            max_backlog_lines=settings.log_follow_backlog_lines,
        )
        self._functions: dict[str, LocalFunction] = {}
        self._changes = asyncio.Lock()
        self._tracker = ProcessTracker()
        self._session: aiohttp.ClientSession | None = None
        self._ready = False

    async def start(self) -> None:
        """Load the stored functions, write their secrets and start their processes."""
        try:
            loaded = await asyncio.to_thread(self._load_state)
        except StorageError as exc:
            raise ProviderStartError(str(exc)) from exc
        await self._tracker.start()
        # NB: no connection limit, because each in-flight call to an http-mode
        # function uses one connection for as long as the function runs.
        self._session = http_sessions.new_session(
            limit=0,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        for path, stored in loaded:
            try:
                spec = self._build_spec(stored.deployment)
            except (InvalidRequest, NamespaceNotFound, ValueError) as exc:
                logger.warning(
                    "skipped invalid function file: %s",
                    exc,
                    extra={"ctx": {"path": str(path)}},
                )
                continue
            try:
                await self._restore_secret_files(spec)
            except StorageError as exc:
                logger.warning(
                    "skipped function whose secret files cannot be written: %s",
                    exc,
                    extra={"ctx": {"function": spec.ref}},
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

    def _load_state(self) -> list[tuple[Path, StoredFunction]]:
        loaded = self._store.load_all()
        self._secrets.prepare()
        self._logs.prepare()
        return loaded

    async def stop(self) -> None:
        """Stop every function process, end log streams and close the HTTP client."""
        self._ready = False
        servers = [function.http for function in self._functions.values()]
        await asyncio.gather(*(server.stop() for server in servers if server))
        await self._tracker.kill_all()
        await self._tracker.close()
        self._logs.close()
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
        """Store and start a new function, or raise FunctionExists if it is deployed.

        Raise InvalidRequest when the function names a secret that does not exist.
        """
        spec = self._build_spec(deployment)
        async with self._changes:
            if spec.name in self._functions:
                raise FunctionExists(
                    f"Function {spec.name!r} already exists in namespace "
                    f"{spec.namespace!r}. To change it, update it with PUT "
                    "/system/functions ('faashub deploy' and 'faas-cli deploy' "
                    "do that)."
                )
            replicas = (
                DEFAULT_REPLICAS if spec.min_replicas is None else spec.min_replicas
            )
            stored = StoredFunction(
                deployment=_with_namespace(deployment, spec.namespace),
                created_at=datetime.now(UTC),
                replicas=replicas,
            )
            await self._save_with_secrets(spec, stored, previous_secrets=None)
            self._functions[spec.name] = self._activate(spec, stored)
        logger.info(
            "function deployed",
            extra={
                "ctx": {"function": spec.ref, "mode": spec.mode, "replicas": replicas}
            },
        )

    async def update_function(self, deployment: FunctionDeployment) -> None:
        """Replace a function's definition and restart its server processes, if any.

        The replica count stays, unless the label `com.openfaas.scale.min`
        sets it, as faas-netes does on an update.
        """
        spec = self._build_spec(deployment)
        async with self._changes:
            current = self._lookup(spec.name, spec.namespace)
            replicas = (
                current.replicas if spec.min_replicas is None else spec.min_replicas
            )
            definition.validate_replicas(
                spec, replicas, max_replicas=self._settings.max_replicas
            )
            stored = StoredFunction(
                deployment=_with_namespace(deployment, spec.namespace),
                created_at=current.stored.created_at,
                replicas=replicas,
            )
            await self._save_with_secrets(
                spec, stored, previous_secrets=current.spec.secrets
            )
            if current.http is not None:
                await current.http.stop()
            replacement = self._activate(spec, stored)
            replacement.invocation_count = current.invocation_count
            self._functions[spec.name] = replacement
        logger.info(
            "function updated",
            extra={
                "ctx": {"function": spec.ref, "mode": spec.mode, "replicas": replicas}
            },
        )

    async def delete_function(self, name: str, namespace: str) -> None:
        """Remove a function with its processes, secret files and log."""
        async with self._changes:
            current = self._lookup(name, namespace)
            await asyncio.to_thread(
                self._store.delete, current.spec.name, current.spec.namespace
            )
            del self._functions[current.spec.name]
            current.removed.set()
            if current.http is not None:
                await current.http.stop()
            self._logs.remove(current.ref)
            await asyncio.to_thread(self._secrets.remove_function_folder, current.ref)
        logger.info("function deleted", extra={"ctx": {"function": current.spec.ref}})

    async def scale_function(self, name: str, namespace: str, *, replicas: int) -> None:
        """Set and store a function's replicas, then start or stop its processes.

        Raise InvalidRequest for a count outside 0 to the max_replicas
        setting, or above 1 for a function with an upstream_url.
        """
        async with self._changes:
            function = self._lookup(name, namespace)
            definition.validate_replicas(
                function.spec, replicas, max_replicas=self._settings.max_replicas
            )
            previous = function.replicas
            await self._set_replicas(function, replicas)
        logger.info(
            "function scaled",
            extra={
                "ctx": {
                    "function": function.spec.ref,
                    "from_replicas": previous,
                    "replicas": replicas,
                }
            },
        )

    async def list_namespaces(self) -> list[str]:
        """Return the one namespace of the local provider."""
        return [definition.NAMESPACE]

    async def list_secrets(self, namespace: str) -> list[Secret]:
        """Return the names of the stored secrets, sorted, without values."""
        namespace = definition.resolve_namespace(namespace)
        secret_names = await asyncio.to_thread(self._secrets.names)
        return [Secret(name=name, namespace=namespace) for name in secret_names]

    async def create_secret(self, name: str, namespace: str, *, value: bytes) -> None:
        """Store a new secret, or raise SecretExists when one has that name."""
        namespace = self._resolve_secret(name, namespace)
        self._check_secret_size(name, value)
        async with self._changes:
            if await asyncio.to_thread(self._secrets.exists, name):
                raise SecretExists(
                    f"Secret {name!r} already exists in namespace {namespace!r}. "
                    "To change its value, update it with PUT /system/secrets "
                    "('faashub secret update' or 'faas-cli secret update')."
                )
            await asyncio.to_thread(self._secrets.write, name, value)
        logger.info("secret created", extra={"ctx": {"secret": name}})

    async def update_secret(self, name: str, namespace: str, *, value: bytes) -> None:
        """Replace a secret's value, and its file in every function that uses it."""
        namespace = self._resolve_secret(name, namespace)
        self._check_secret_size(name, value)
        async with self._changes:
            await self._require_secret(name, namespace)
            await asyncio.to_thread(self._secrets.write, name, value)
            users = self._functions_using(name)
            for function in users:
                await asyncio.to_thread(
                    self._secrets.write_function_secret, function.ref, name, value
                )
        logger.info(
            "secret updated", extra={"ctx": {"secret": name, "functions": len(users)}}
        )

    async def delete_secret(self, name: str, namespace: str) -> None:
        """Remove a secret, or raise SecretInUse while a deployed function names it."""
        namespace = self._resolve_secret(name, namespace)
        async with self._changes:
            await self._require_secret(name, namespace)
            users = self._functions_using(name)
            if users:
                raise SecretInUse(
                    secret_in_use_message(
                        name, [function.spec.name for function in users]
                    )
                )
            await asyncio.to_thread(self._secrets.delete, name)
        logger.info("secret deleted", extra={"ctx": {"secret": name}})

    async def read_logs(self, request: LogRequest) -> LogReader:
        """Return a reader of the function's log, or raise FunctionNotFound."""
        function = self._lookup(request.name, request.namespace)
        return self._logs.open_reader(function.ref, request)

    def info(self) -> ProviderInfo:
        """Return the provider's name, orchestration and faashub release."""
        return ProviderInfo(
            provider=PROVIDER_NAME,
            orchestration=ORCHESTRATION,
            version=VersionInfo(release=__version__),
        )

    async def function_endpoints(self, name: str, namespace: str) -> FunctionEndpoints:
        """Return the URLs of an http-mode function's responding replicas.

        A classic function runs one process per request, so it has no URL,
        and neither has a function at zero replicas: their calls go through
        `invoke`. Raises FunctionNotFound or NamespaceNotFound.
        """
        function = self._lookup(name, namespace)
        if function.http is None or function.replicas == 0:
            return NO_ENDPOINTS
        return FunctionEndpoints(
            urls=function.http.replica_urls(),
            exec_timeout_s=function.spec.exec_timeout_s,
        )

    @contextlib.asynccontextmanager
    async def invoke(self, invocation: Invocation) -> AsyncIterator[InvocationResponse]:
        """Run `invocation` in classic mode or proxy it to an http-mode replica."""
        function = self._lookup_ref(invocation.function)
        if function.replicas == 0:
            function = await self._scale_from_zero(invocation.function)
        function.invocation_count += 1
        if function.http is None:
            yield await classic.run(
                function.spec,
                invocation,
                tracker=self._tracker,
                log=function.log,
                removed=function.removed,
                max_output_bytes=self._settings.max_classic_output_bytes,
            )
        else:
            async with function.http.forward(invocation) as response:
                yield response

    async def _scale_from_zero(self, ref: FunctionRef) -> LocalFunction:
        """Scale a function at zero replicas to one, and return it."""
        async with self._changes:
            # The function may have been replaced or deleted while this waited.
            function = self._lookup_ref(ref)
            if function.replicas == 0:
                await self._set_replicas(function, DEFAULT_REPLICAS)
                logger.info(
                    "function scaled from zero",
                    extra={
                        "ctx": {
                            "function": function.spec.ref,
                            "replicas": DEFAULT_REPLICAS,
                        }
                    },
                )
        return function

    async def _set_replicas(self, function: LocalFunction, replicas: int) -> None:
        """Store the replica count, then start or stop processes to match it."""
        stored = function.stored.model_copy(update={"replicas": replicas})
        await asyncio.to_thread(self._store.save, stored)
        function.stored = stored
        if function.http is not None:
            await function.http.scale(replicas)

    async def _save_with_secrets(
        self,
        spec: FunctionSpec,
        stored: StoredFunction,
        *,
        previous_secrets: tuple[str, ...] | None,
    ) -> None:
        """Check the function's secrets exist, write its secret files, then save it.

        When the save fails, the secret files go back to `previous_secrets`, or
        are removed for a new function (None).
        """
        secret_names = await asyncio.to_thread(self._secrets.names)
        missing = [name for name in spec.secrets if name not in secret_names]
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise InvalidRequest(
                f"Secret {listed} of function {spec.name!r} not found in namespace "
                f"{spec.namespace!r}. Create it first with POST /system/secrets "
                "('faashub secret create' or 'faas-cli secret create')."
            )
        ref = FunctionRef(spec.name, spec.namespace)
        await asyncio.to_thread(self._secrets.write_function_folder, ref, spec.secrets)
        try:
            await asyncio.to_thread(self._store.save, stored)
        except StorageError:
            await self._restore_secret_folder(ref, previous_secrets)
            raise

    async def _restore_secret_folder(
        self, ref: FunctionRef, secrets: tuple[str, ...] | None
    ) -> None:
        """Put a function's secret files back after a failed save, if possible."""
        try:
            if secrets is None:
                await asyncio.to_thread(self._secrets.remove_function_folder, ref)
            else:
                await asyncio.to_thread(
                    self._secrets.write_function_folder, ref, secrets
                )
        except StorageError as exc:
            logger.warning(
                "cannot restore secret files after a failed save: %s",
                exc,
                extra={"ctx": {"function": str(ref)}},
            )

    async def _restore_secret_files(self, spec: FunctionSpec) -> None:
        """Write a loaded function's secret files again, skipping missing secrets."""
        secret_names = await asyncio.to_thread(self._secrets.names)
        present = [name for name in spec.secrets if name in secret_names]
        missing = [name for name in spec.secrets if name not in secret_names]
        if missing:
            logger.warning(
                "function names secrets that are not stored, started without them",
                extra={"ctx": {"function": spec.ref, "secrets": ",".join(missing)}},
            )
        ref = FunctionRef(spec.name, spec.namespace)
        await asyncio.to_thread(self._secrets.write_function_folder, ref, present)

    def _build_spec(self, deployment: FunctionDeployment) -> FunctionSpec:
        spec = definition.build_spec(
            deployment,
            default_exec_timeout_s=self._settings.exec_timeout_s,
            max_replicas=self._settings.max_replicas,
        )
        if not spec.secrets:
            return spec
        ref = FunctionRef(spec.name, spec.namespace)
        return replace(spec, secrets_dir=str(self._secrets.function_folder(ref)))

    def _activate(self, spec: FunctionSpec, stored: StoredFunction) -> LocalFunction:
        """Wrap a stored function for serving, starting its replicas in http mode."""
        if stored.replicas is None:
            replicas = (
                DEFAULT_REPLICAS if spec.min_replicas is None else spec.min_replicas
            )
            stored = stored.model_copy(update={"replicas": replicas})
        ref = FunctionRef(spec.name, spec.namespace)
        function = LocalFunction(spec=spec, stored=stored, log=self._logs.log_of(ref))
        if spec.mode == "http":
            assert self._session is not None, "start() creates the session first"
            function.http = HttpFunction(
                spec,
                session=self._session,
                tracker=self._tracker,
                start_timeout_s=self._settings.http_start_timeout_s,
                stop_grace_s=self._settings.stop_grace_s,
                log=function.log,
            )
            function.http.start(function.replicas)
        return function

    def _functions_using(self, secret: str) -> list[LocalFunction]:
        return [
            self._functions[name]
            for name in sorted(self._functions)
            if secret in self._functions[name].spec.secrets
        ]

    def _check_secret_size(self, name: str, value: bytes) -> None:
        limit = self._settings.max_secret_bytes
        if len(value) > limit:
            raise InvalidRequest(
                f"Secret {name!r} has {len(value)} bytes, more than the {limit} "
                "bytes a secret may hold (the provider's --max-secret-bytes)."
            )

    def _resolve_secret(self, name: str, namespace: str) -> str:
        """Validate a secret name and return its namespace."""
        names.validate_label(name, what="secret name")
        return definition.resolve_namespace(namespace)

    async def _require_secret(self, name: str, namespace: str) -> None:
        if not await asyncio.to_thread(self._secrets.exists, name):
            raise SecretNotFound(
                f"Secret {name!r} not found in namespace {namespace!r}. List the "
                "secrets with GET /system/secrets ('faashub secret list'), or "
                "create it with POST /system/secrets."
            )

    def _lookup(self, name: str, namespace: str) -> LocalFunction:
        """Return a deployed function; raise NamespaceNotFound or FunctionNotFound."""
        namespace = definition.resolve_namespace(namespace)
        names.validate_label(name)
        return self._lookup_ref(FunctionRef(name, namespace))

    def _lookup_ref(self, ref: FunctionRef) -> LocalFunction:
        definition.resolve_namespace(ref.namespace)
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
