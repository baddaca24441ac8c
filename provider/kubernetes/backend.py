"""The Kubernetes backend: functions as Deployments and Services on a cluster.

`KubernetesBackend` implements `provider.backend.ProviderBackend` the way
faas-netes does, without the Community Edition's limits: any number of
functions, any replica count including zero, several topics per function,
and any namespace annotated `openfaas="1"` (never `kube-system`) when
`cluster_wide` is on. `objects` builds and reads the objects, `cache` keeps
a watch-fed copy of the Deployments that listing and invocation read,
`pod_logs` streams pod logs and `proxy` forwards invocations with aiohttp.

Every API call runs in `kube.KubeApi`'s thread pool. Its failures map to the
provider's errors: not found 404, conflict 409, invalid 422, forbidden 403,
a bad request 400, no response at all (a refused connection or a timeout)
`ApiServerUnavailable`, which the API sends as 503 with Retry-After, and
anything else 500 with the API's message.

Scale from zero: a call to a function at zero replicas patches it to its
minimum (`com.openfaas.scale.min`, at least 1) and waits until the cache
shows an available replica, for at most `scale_from_zero_timeout_s` (then
504). Other calls that arrive meanwhile wait too. A call to a function that
has replicas but none available gets 503 at once, so the queue-worker
retries it later. A function labelled `com.openfaas.scale.zero=true` is
scaled to zero once it has had no call for its
`com.openfaas.scale.zero-duration` (default 15m); `scale_idle_functions`
makes that check and a background task runs it every
`idle_check_interval_s`.
"""

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from kubernetes import client

from faashub import __version__, names
from faashub.logs import LimitedWarning
from faashub.names import FunctionRef
from faashub.settings import KubernetesProviderSettings
from provider.backend import (
    Conflict,
    Forbidden,
    FunctionExists,
    FunctionNotFound,
    FunctionTimeout,
    FunctionUnavailable,
    InvalidObject,
    InvalidRequest,
    Invocation,
    InvocationResponse,
    NamespaceNotFound,
    ProviderError,
    ProviderStartError,
    SecretExists,
    SecretInUse,
    SecretNotFound,
    StorageError,
    secret_in_use_message,
)
from provider.kubernetes import objects
from provider.kubernetes.cache import DeploymentCache, SyncFailure, format_utc
from provider.kubernetes.kube import (
    FAILURE_WARNING_INTERVAL_S,
    TIMED_OUT,
    ApiError,
    JsonObject,
    KubeApi,
    load_api_client,
    server_url,
)
from provider.kubernetes.pod_logs import PodLogStream
from provider.kubernetes.proxy import FunctionProxy
from provider.types import (
    FunctionDeployment,
    FunctionStatus,
    LogRequest,
    ProviderInfo,
    Secret,
    VersionInfo,
)

logger = logging.getLogger(__name__)

# Every request fails this way while the API server is down, so the
# warning is written at most once per interval with a count of the others.
api_server_silent = LimitedWarning(logger, interval_s=FAILURE_WARNING_INTERVAL_S)

PROVIDER_NAME: Final = "faashub-kubernetes"
ORCHESTRATION: Final = "kubernetes"
SYSTEM_NAMESPACE: Final = "kube-system"
MERGE_PATCH: Final = "application/merge-patch+json"
# Seconds that the list of namespaces annotated openfaas="1" is reused.
NAMESPACE_CACHE_S: Final = 5.0


class ApiServerUnavailable(ProviderError, ConnectionError):
    """A Kubernetes API request that got no response: refused, or timed out.

    The provider API sends a backend error that is a ConnectionError as 503
    with Retry-After, because the request may succeed once the API server
    responds again.
    """


class KubernetesBackend:
    """Deploys functions as Deployments and Services and invokes them over HTTP.

    `api_client` replaces the client that the settings describe; `clock`
    (monotonic seconds) is what the idle scaler measures time with.
    """

    def __init__(
        self,
        settings: KubernetesProviderSettings,
        *,
        api_client: client.ApiClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._api_client = api_client
        self._clock = clock
        self._default_namespace = settings.function_namespace
        self._options = objects.ContainerOptions(
            image_pull_policy=settings.image_pull_policy,
            set_non_root_user=settings.set_non_root_user,
            probe_initial_delay_s=settings.probe_initial_delay_s,
            probe_period_s=settings.probe_period_s,
            probe_timeout_s=settings.probe_timeout_s,
        )
        self._proxy = FunctionProxy(
            address_template=settings.function_address_template,
            timeout_s=settings.upstream_timeout_s,
        )
        self._kube: KubeApi | None = None
        self._cache: DeploymentCache | None = None
        self._namespaces: frozenset[str] = frozenset()
        self._namespaces_read_at: float | None = None
        self._scale_locks: dict[FunctionRef, asyncio.Lock] = {}
        self._waking: dict[FunctionRef, int] = {}
        self._in_flight: dict[FunctionRef, int] = {}
        self._last_activity: dict[FunctionRef, float] = {}
        self._idle_task: asyncio.Task[None] | None = None
        self._ready = False
        # The sync failure whose stale listings were logged, so that each
        # outage is logged once.
        self._stale_listing_logged: SyncFailure | None = None

    # Lifecycle

    async def start(self) -> None:
        """Connect to the API, fill the function cache and start the idle scaler."""
        if self._api_client is None:
            api_client, source = load_api_client(
                kubeconfig=self._settings.kubeconfig,
                context=self._settings.kube_context,
            )
        else:
            api_client, source = self._api_client, "the API client passed in"
        self._kube = KubeApi(api_client, threads=self._settings.api_threads)
        watched = None if self._settings.cluster_wide else self._default_namespace
        self._cache = DeploymentCache(self._kube, namespace=watched)
        try:
            await self._cache.start()
        except ApiError as exc:
            self._kube.close()
            raise _start_error(exc, url=server_url(api_client), source=source) from exc
        self._proxy.start()
        self._idle_task = asyncio.create_task(
            self._run_idle_scaler(), name="idle-scaler"
        )
        self._ready = True
        logger.info(
            "kubernetes provider started",
            extra={
                "ctx": {
                    "functions": len(self._cache.all()),
                    "namespace": self._default_namespace,
                    "cluster_wide": self._settings.cluster_wide,
                }
            },
        )

    async def stop(self) -> None:
        """Stop the watch and the idle scaler and close the HTTP clients."""
        self._ready = False
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
            self._idle_task = None
        if self._cache is not None:
            await self._cache.stop()
        await self._proxy.close()
        if self._kube is not None:
            self._kube.close()
        logger.info("kubernetes provider stopped")

    def is_ready(self) -> bool:
        """Return whether the function cache is filled and no stop has begun."""
        return self._ready

    def degraded_reason(self) -> str:
        """Return why the function cache may be out of date, or "" when it is current.

        `/healthz` sends this reason with its 200.
        """
        failure = self._cache.sync_failure() if self._cache is not None else None
        if failure is None:
            return ""
        return (
            "The Kubernetes API server has not returned the function Deployments "
            f"since {format_utc(failure.failed_at)}: {failure.reason}. Function "
            "listings and invocations use the cache of "
            f"{format_utc(failure.synced_at)}, and requests that need the API "
            "server, such as deploy, scale, secrets and logs, fail until it "
            "responds."
        )

    @property
    def default_namespace(self) -> str:
        """The namespace of a call or request that names none: function_namespace."""
        return self._default_namespace

    def info(self) -> ProviderInfo:
        """Return the provider's name, orchestration and faashub release."""
        return ProviderInfo(
            provider=PROVIDER_NAME,
            orchestration=ORCHESTRATION,
            version=VersionInfo(release=__version__),
        )

    # Functions

    async def list_functions(self, namespace: str) -> list[FunctionStatus]:
        """Return the status of every function in the namespace, from the cache."""
        namespace = await self._resolve_namespace(namespace)
        self._log_stale_listing()
        return [objects.function_status(item) for item in self._cached.items(namespace)]

    async def get_function(self, name: str, namespace: str) -> FunctionStatus:
        """Return one function's status from the cache, or raise FunctionNotFound."""
        ref = FunctionRef(name, await self._resolve_namespace(namespace))
        self._log_stale_listing()
        return objects.function_status(self._cached_deployment(ref))

    def _log_stale_listing(self) -> None:
        """Log once per outage that listings come from a cache that may be stale."""
        failure = self._cached.sync_failure()
        if failure is None:
            return
        logged = self._stale_listing_logged
        if logged is not None and logged.failed_at == failure.failed_at:
            return
        self._stale_listing_logged = failure
        logger.warning(
            "function status served from a cache that may be out of date, "
            "because the function list has failed since %s: %s",
            format_utc(failure.failed_at),
            failure.reason,
            extra={"ctx": {"cache_synced_at": format_utc(failure.synced_at)}},
        )

    async def create_function(self, deployment: FunctionDeployment) -> None:
        """Create the function's Deployment and Service.

        Raise FunctionExists when its Deployment exists, and InvalidRequest
        for a bad definition or a secret that does not exist.
        """
        ref = await self._check_definition(deployment)
        if self._cached.get(ref.name, ref.namespace) is not None:
            raise self._exists_error(ref)
        secrets = await self._secret_mounts(deployment, ref.namespace)
        initial = objects.initial_replicas(deployment.labels)
        replicas = objects.DEFAULT_REPLICAS if initial is None else initial
        body = objects.build_deployment(
            deployment,
            namespace=ref.namespace,
            replicas=replicas,
            secrets=secrets,
            options=self._options,
        )
        try:
            created = await self._api.call(
                self._api.apps.create_namespaced_deployment, ref.namespace, body
            )
        except ApiError as exc:
            if exc.status == 409:
                raise self._exists_error(ref) from exc
            raise _api_failure(exc, action=f"create the Deployment of {ref}") from exc
        # The API calls run in threads that a cancel does not stop, so the
        # Service step is shielded and a cancelled create is undone only
        # after that step has ended.
        service_step = asyncio.ensure_future(self._apply_service(deployment, ref))
        try:
            await asyncio.shield(service_step)
        except ProviderError as exc:
            # Without its Service the function cannot be called, so the
            # create is undone and can be sent again.
            await self._roll_back_create(ref, exc)
            raise
        except asyncio.CancelledError:
            # Cancelled, as when the provider stops: the undo runs in a task
            # of its own, so that a second cancel does not stop it half-way.
            undo = asyncio.ensure_future(self._undo_cancelled_create(ref, service_step))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(undo)
            raise
        self._cached.store(created)
        self._touch(ref)
        logger.info(
            "function deployed",
            extra={"ctx": {"function": str(ref), "replicas": replicas}},
        )

    async def _undo_cancelled_create(
        self, ref: FunctionRef, service_step: "asyncio.Future[None]"
    ) -> None:
        """Delete the Deployment and Service of a create cancelled in its Service step.

        Wait for `service_step` to end first, because its API call goes on in
        a thread after the cancel and may still create the Service. A failure
        is logged with the command that removes what is left.
        """
        with contextlib.suppress(ProviderError):
            await service_step
        try:
            try:
                await self._api.call(
                    self._api.apps.delete_namespaced_deployment,
                    ref.name,
                    ref.namespace,
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
            self._cached.discard(ref.name, ref.namespace)
            await self._delete_service(ref)
        except ApiError as exc:
            logger.error(
                "cancelled function create not undone: %s. Remove what is left "
                "with 'kubectl delete deployment,service %s -n %s'",
                exc,
                ref.name,
                ref.namespace,
                extra={"ctx": {"function": str(ref)}},
            )
            return
        logger.info(
            "function create undone because it was cancelled",
            extra={"ctx": {"function": str(ref)}},
        )

    async def _roll_back_create(self, ref: FunctionRef, failure: ProviderError) -> None:
        """Delete the Deployment of a create whose Service step failed.

        Return when the Deployment is gone, so the caller re-raises `failure`.
        When the delete fails too, raise an error of `failure`'s type whose
        message names both failures and the commands that remove the
        Deployment.
        """
        try:
            await self._api.call(
                self._api.apps.delete_namespaced_deployment, ref.name, ref.namespace
            )
        except ApiError as exc:
            if exc.status != 404:
                logger.error(
                    "rollback of function create failed: %s",
                    exc,
                    extra={"ctx": {"function": str(ref)}},
                )
                raise _with_sentence(
                    failure,
                    f"The provider then failed to delete the Deployment of {ref} "
                    f"that it had created: {exc.message}. The Deployment has no "
                    "Service, so the function cannot be called. Remove it with "
                    f"'faas-cli remove {ref.name} --namespace {ref.namespace}' "
                    f"or 'kubectl delete deployment {ref.name} -n {ref.namespace}', "
                    "then deploy again.",
                ) from exc
        # The watch may have put the new Deployment in the cache already, and a
        # create sent again before the watch's delete event would get 409.
        self._cached.discard(ref.name, ref.namespace)
        logger.info(
            "function create rolled back because its service failed",
            extra={"ctx": {"function": str(ref)}},
        )

    async def update_function(self, deployment: FunctionDeployment) -> None:
        """Patch the function's Deployment and Service to the new definition.

        The rollout label changes on every update, so pods restart with new
        secrets and images, one at a time. The replica count stays, unless
        the label `com.openfaas.scale.min` sets it.
        """
        ref = await self._check_definition(deployment)
        current = await self._read_deployment(ref)
        # A Service of another application rejects the update before the
        # Deployment is patched, because a patch that restarts the pods cannot
        # be undone. NOTE: a Service created between this read and
        # _apply_service still gets the 400 after the patch.
        await self._check_service_owner(ref)
        secrets = await self._secret_mounts(deployment, ref.namespace)
        initial = objects.initial_replicas(deployment.labels)
        replicas = objects.replicas_of(current) if initial is None else initial
        desired = objects.build_deployment(
            deployment,
            namespace=ref.namespace,
            replicas=replicas,
            secrets=secrets,
            options=self._options,
        )
        patch = objects.merge_patch(_managed_part(current), _managed_part(desired))
        updated = await self._patch_deployment(ref, patch, action="update")
        await self._apply_service(deployment, ref)
        self._cached.store(updated)
        self._touch(ref)
        logger.info(
            "function updated",
            extra={"ctx": {"function": str(ref), "replicas": replicas}},
        )

    async def delete_function(self, name: str, namespace: str) -> None:
        """Delete the function's Deployment and Service, or raise FunctionNotFound.

        A Service without the function's faas_function label is left in
        place. When the Deployment is gone but the function's Service is
        not, as after a delete whose Service step failed, the delete removes
        that Service and succeeds.
        """
        ref = FunctionRef(name, await self._resolve_namespace(namespace))
        try:
            await self._read_deployment(ref)
        except FunctionNotFound:
            if await self._delete_leftover_service(ref):
                return
            raise
        try:
            await self._api.call(
                self._api.apps.delete_namespaced_deployment, ref.name, ref.namespace
            )
        except ApiError as exc:
            if exc.status == 404:
                raise self._not_found_error(ref) from exc
            raise _api_failure(exc, action=f"delete the Deployment of {ref}") from exc
        self._cached.discard(ref.name, ref.namespace)
        self._forget(ref)
        try:
            await self._delete_service(ref)
        except ApiError as exc:
            raise _api_failure(
                exc,
                action=f"delete the Service of {ref}",
                next_step=(
                    "The function's Deployment is already deleted. Send the "
                    "delete again to remove the Service."
                ),
            ) from exc
        logger.info("function deleted", extra={"ctx": {"function": str(ref)}})

    async def scale_function(self, name: str, namespace: str, *, replicas: int) -> None:
        """Set the Deployment's replicas, any count from 0 up."""
        ref = FunctionRef(name, await self._resolve_namespace(namespace))
        if replicas < 0:
            raise InvalidRequest(
                f"Invalid replicas {replicas} for function {ref}: use 0 or more."
            )
        previous = objects.replicas_of(self._cached_deployment(ref))
        updated = await self._patch_deployment(
            ref, {"spec": {"replicas": replicas}}, action="scale"
        )
        self._cached.store(updated)
        self._touch(ref)
        logger.info(
            "function scaled",
            extra={
                "ctx": {
                    "function": str(ref),
                    "from_replicas": previous,
                    "replicas": replicas,
                }
            },
        )

    # Namespaces

    async def list_namespaces(self) -> list[str]:
        """Return the default namespace and, cluster-wide, every annotated one."""
        if not self._settings.cluster_wide:
            return [self._default_namespace]
        allowed = await self._allowed_namespaces(refresh=True)
        return sorted(allowed | {self._default_namespace})

    # Secrets

    async def list_secrets(self, namespace: str) -> list[Secret]:
        """Return the names of the secrets that faashub or faas-netes manage."""
        namespace = await self._resolve_namespace(namespace)
        managers = f"{objects.SECRET_MANAGER},{objects.OPENFAAS_SECRET_MANAGER}"
        try:
            body = await self._api.call(
                self._api.core.list_namespaced_secret,
                namespace,
                label_selector=f"{objects.SECRET_MANAGED_BY_LABEL} in ({managers})",
            )
        except ApiError as exc:
            raise _api_failure(
                exc, action=f"list the secrets of {namespace!r}"
            ) from exc
        names_found = sorted(
            str(item["metadata"]["name"])
            for item in body.get("items") or []
            if _is_managed_secret(item)
        )
        return [Secret(name=name, namespace=namespace) for name in names_found]

    async def create_secret(self, name: str, namespace: str, *, value: bytes) -> None:
        """Create an Opaque secret whose one key is its name, or raise SecretExists."""
        namespace = await self._resolve_namespace(namespace)
        names.validate_label(name, what="secret name")
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {objects.SECRET_MANAGED_BY_LABEL: objects.SECRET_MANAGER},
            },
            "data": {name: base64.b64encode(value).decode("ascii")},
        }
        try:
            await self._api.call(
                self._api.core.create_namespaced_secret, namespace, body
            )
        except ApiError as exc:
            if exc.status == 409:
                raise SecretExists(
                    f"Secret {name!r} already exists in namespace {namespace!r}. To "
                    "change its value, update it with PUT /system/secrets "
                    "('faas-cli secret update')."
                ) from exc
            raise _api_failure(exc, action=f"create secret {name!r}") from exc
        logger.info(
            "secret created", extra={"ctx": {"secret": name, "namespace": namespace}}
        )

    async def update_secret(self, name: str, namespace: str, *, value: bytes) -> None:
        """Replace a managed secret's value; running pods see the new file.

        Raise SecretNotFound for a missing secret and InvalidRequest for one
        that faashub does not manage.
        """
        namespace = await self._resolve_namespace(namespace)
        await self._read_managed_secret(name, namespace)
        patch = {"data": {name: base64.b64encode(value).decode("ascii")}}
        try:
            await self._api.call(
                self._api.core.patch_namespaced_secret,
                name,
                namespace,
                patch,
                _content_type=MERGE_PATCH,
            )
        except ApiError as exc:
            if exc.status == 404:
                raise self._secret_not_found(name, namespace) from exc
            raise _api_failure(exc, action=f"update secret {name!r}") from exc
        logger.info(
            "secret updated", extra={"ctx": {"secret": name, "namespace": namespace}}
        )

    async def delete_secret(self, name: str, namespace: str) -> None:
        """Delete a managed secret, or raise SecretInUse while a function names it."""
        namespace = await self._resolve_namespace(namespace)
        await self._read_managed_secret(name, namespace)
        users = [
            status.name
            for status in map(objects.function_status, self._cached.items(namespace))
            if name in status.secrets
        ]
        if users:
            raise SecretInUse(secret_in_use_message(name, users))
        try:
            await self._api.call(
                self._api.core.delete_namespaced_secret, name, namespace
            )
        except ApiError as exc:
            if exc.status == 404:
                raise self._secret_not_found(name, namespace) from exc
            raise _api_failure(exc, action=f"delete secret {name!r}") from exc
        logger.info(
            "secret deleted", extra={"ctx": {"secret": name, "namespace": namespace}}
        )

    # Logs

    async def read_logs(self, request: LogRequest) -> PodLogStream:
        """Return a stream of the function's pod logs, or raise FunctionNotFound."""
        ref = FunctionRef(
            request.name, await self._resolve_namespace(request.namespace)
        )
        self._cached_deployment(ref)
        stream = PodLogStream(
            self._api,
            request,
            namespace=ref.namespace,
            function_exists=lambda: (
                self._cached.get(ref.name, ref.namespace) is not None
            ),
        )
        try:
            await stream.start()
        except ApiError as exc:
            await stream.aclose()
            raise _api_failure(exc, action=f"list the pods of {ref}") from exc
        return stream

    # Invocation

    @contextlib.asynccontextmanager
    async def invoke(self, invocation: Invocation) -> AsyncIterator[InvocationResponse]:
        """Forward `invocation` to the function, scaling it from zero first."""
        ref = invocation.function
        await self._check_invocation_namespace(ref)
        deployment = self._cached_deployment(ref)
        self._in_flight[ref] = self._in_flight.get(ref, 0) + 1
        self._touch(ref)
        try:
            if objects.available_replicas_of(deployment) == 0:
                await self._wait_for_replica(ref, deployment)
            async with self._proxy.forward(invocation) as response:
                yield response
        finally:
            self._in_flight[ref] -= 1
            if not self._in_flight[ref]:
                del self._in_flight[ref]
            self._touch(ref)

    async def _wait_for_replica(self, ref: FunctionRef, deployment: JsonObject) -> None:
        """Scale a function at zero up, then wait until a replica is available.

        Raise FunctionUnavailable at once when the function has replicas but
        none is available and no scale from zero is under way, and
        FunctionTimeout when none is available within the bound.
        """
        waking = self._waking.get(ref, 0)
        if objects.replicas_of(deployment) > 0 and not waking:
            raise FunctionUnavailable(
                f"No endpoints available for function {ref}: none of its "
                f"{objects.replicas_of(deployment)} replicas is ready. Check its "
                "pods with kubectl, or read its log with GET "
                f"/system/logs?name={ref.name}&namespace={ref.namespace}."
            )
        self._waking[ref] = waking + 1
        try:
            if objects.replicas_of(deployment) == 0:
                await self._scale_from_zero(ref)
            await self._wait_for_available(ref)
        finally:
            self._waking[ref] -= 1
            if not self._waking[ref]:
                del self._waking[ref]

    async def _scale_from_zero(self, ref: FunctionRef) -> None:
        lock = self._scale_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            # Another call may have scaled it while this one waited.
            deployment = self._cached_deployment(ref)
            if objects.replicas_of(deployment) > 0:
                return
            labels = deployment.get("metadata", {}).get("labels") or {}
            try:
                minimum = objects.initial_replicas(labels) or 0
            except InvalidRequest:
                minimum = 0
            replicas = max(minimum, 1)
            updated = await self._patch_deployment(
                ref, {"spec": {"replicas": replicas}}, action="scale from zero"
            )
            self._cached.store(updated)
        logger.info(
            "function scaled from zero",
            extra={"ctx": {"function": str(ref), "replicas": replicas}},
        )

    async def _wait_for_available(self, ref: FunctionRef) -> None:
        loop = asyncio.get_running_loop()
        timeout_s = self._settings.scale_from_zero_timeout_s
        deadline = loop.time() + timeout_s
        while True:
            changed = self._cached.changed()
            deployment = self._cached.get(ref.name, ref.namespace)
            if deployment is None:
                raise FunctionUnavailable(
                    f"Function {ref} was deleted while the request waited for it to "
                    "start."
                )
            if objects.available_replicas_of(deployment) > 0:
                return
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise FunctionTimeout(
                    f"Function {ref} had no ready replica within {timeout_s:g} s of "
                    "scaling from zero. Check its pods with kubectl, or raise "
                    "scale_from_zero_timeout_s if it starts slowly."
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining_s):
                    await changed.wait()

    # Scale to zero

    async def scale_idle_functions(self) -> list[FunctionRef]:
        """Scale to zero each function labelled for it that had no call for long enough.

        Return the functions scaled. A function counts as idle from when this
        provider first saw it, so a restart of the provider does not scale
        everything down at once.
        """
        now = self._clock()
        scaled: list[FunctionRef] = []
        for deployment in self._cached.all():
            labels = deployment.get("metadata", {}).get("labels") or {}
            if labels.get(objects.SCALE_ZERO_LABEL) != "true":
                continue
            metadata = deployment["metadata"]
            ref = FunctionRef(metadata["name"], metadata["namespace"])
            last = self._last_activity.setdefault(ref, now)
            if objects.replicas_of(deployment) == 0 or self._in_flight.get(ref):
                continue
            idle_s = now - last
            if idle_s < objects.scale_zero_duration_s(labels):
                continue
            updated = await self._patch_deployment(
                ref, {"spec": {"replicas": 0}}, action="scale to zero"
            )
            self._cached.store(updated)
            scaled.append(ref)
            logger.info(
                "idle function scaled to zero",
                extra={"ctx": {"function": str(ref), "idle_s": round(idle_s, 1)}},
            )
        return scaled

    async def _run_idle_scaler(self) -> None:
        while True:
            await asyncio.sleep(self._settings.idle_check_interval_s)
            try:
                await self.scale_idle_functions()
            except ProviderError as exc:
                logger.warning("idle function check failed: %s", exc)

    # Helpers

    @property
    def _api(self) -> KubeApi:
        if self._kube is None:
            raise RuntimeError("The Kubernetes backend is not started.")
        return self._kube

    @property
    def _cached(self) -> DeploymentCache:
        if self._cache is None:
            raise RuntimeError("The Kubernetes backend is not started.")
        return self._cache

    def _touch(self, ref: FunctionRef) -> None:
        self._last_activity[ref] = self._clock()

    def _forget(self, ref: FunctionRef) -> None:
        self._last_activity.pop(ref, None)
        self._scale_locks.pop(ref, None)

    def _cached_deployment(self, ref: FunctionRef) -> JsonObject:
        deployment = self._cached.get(ref.name, ref.namespace)
        if deployment is None:
            raise self._not_found_error(ref)
        return deployment

    async def _read_deployment(self, ref: FunctionRef) -> JsonObject:
        """Read a function's Deployment from the API, or raise FunctionNotFound."""
        try:
            deployment: JsonObject = await self._api.call(
                self._api.apps.read_namespaced_deployment, ref.name, ref.namespace
            )
        except ApiError as exc:
            if exc.status == 404:
                raise self._not_found_error(ref) from exc
            raise _api_failure(exc, action=f"read the Deployment of {ref}") from exc
        if not objects.is_function(deployment):
            raise InvalidRequest(
                f"Deployment {ref.name!r} in namespace {ref.namespace!r} is not a "
                f"function: it has no {objects.FUNCTION_LABEL} label, so faashub "
                "leaves it alone."
            )
        return deployment

    async def _patch_deployment(
        self, ref: FunctionRef, patch: JsonObject, *, action: str
    ) -> JsonObject:
        try:
            patched: JsonObject = await self._api.call(
                self._api.apps.patch_namespaced_deployment,
                ref.name,
                ref.namespace,
                patch,
                _content_type=MERGE_PATCH,
            )
        except ApiError as exc:
            if exc.status == 404:
                raise self._not_found_error(ref) from exc
            raise _api_failure(exc, action=f"{action} function {ref}") from exc
        return patched

    async def _apply_service(
        self, deployment: FunctionDeployment, ref: FunctionRef
    ) -> None:
        """Create the function's Service, or patch the one that exists.

        Raise InvalidRequest, and change nothing, when a Service of that name
        exists without the function's faas_function label.
        """
        desired = objects.build_service(deployment, namespace=ref.namespace)
        try:
            await self._api.call(
                self._api.core.create_namespaced_service, ref.namespace, desired
            )
            return
        except ApiError as exc:
            if exc.status != 409:
                raise _api_failure(exc, action=f"create the Service of {ref}") from exc
        current = await self._check_service_owner(ref)
        if current is None:
            raise Conflict(
                f"The Service of {ref} existed when the provider tried to create "
                "it and was deleted before the provider read it. Send the "
                "request again."
            )
        try:
            # Only the fields the provider sets are compared, because the API
            # server fills in others (clusterIP) that cannot be removed.
            patch = {
                "metadata": objects.merge_patch(
                    _metadata_part(current), _metadata_part(desired)
                ),
                "spec": {
                    "type": desired["spec"]["type"],
                    "selector": objects.merge_patch(
                        current.get("spec", {}).get("selector") or {},
                        desired["spec"]["selector"],
                    ),
                    "ports": desired["spec"]["ports"],
                },
            }
            await self._api.call(
                self._api.core.patch_namespaced_service,
                ref.name,
                ref.namespace,
                patch,
                _content_type=MERGE_PATCH,
            )
        except ApiError as exc:
            raise _api_failure(exc, action=f"update the Service of {ref}") from exc

    async def _check_service_owner(self, ref: FunctionRef) -> JsonObject | None:
        """Read the Service named after the function, or None when there is none.

        Raise InvalidRequest when that Service has no faas_function label
        naming the function, because it then belongs to another application.
        """
        try:
            current: JsonObject = await self._api.call(
                self._api.core.read_namespaced_service, ref.name, ref.namespace
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise _api_failure(exc, action=f"read the Service of {ref}") from exc
        if not objects.belongs_to_function(current, ref.name):
            raise InvalidRequest(
                f"Service {ref.name!r} in namespace {ref.namespace!r} exists and "
                f"has no {objects.FUNCTION_LABEL}={ref.name} label, so faashub "
                "leaves it alone. Deploy the function under another name or in "
                "another namespace, or delete that Service first."
            )
        return current

    async def _delete_service(self, ref: FunctionRef) -> bool:
        """Delete the function's Service and return whether one was deleted.

        A Service without the function's faas_function label stays. Raise
        ApiError when reading or deleting it fails.
        """
        try:
            current = await self._api.call(
                self._api.core.read_namespaced_service, ref.name, ref.namespace
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        if not objects.belongs_to_function(current, ref.name):
            logger.info(
                "service not deleted because it lacks the function's "
                "faas_function label",
                extra={"ctx": {"function": str(ref)}},
            )
            return False
        # The precondition makes the API server reject the delete if the
        # Service was replaced after the read above.
        uid = current.get("metadata", {}).get("uid")
        options = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self._api.call(
                self._api.core.delete_namespaced_service,
                ref.name,
                ref.namespace,
                body=options,
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _delete_leftover_service(self, ref: FunctionRef) -> bool:
        """Delete the Service of a function whose Deployment is gone.

        Return whether one was deleted. Raise a provider error when the API
        call fails.
        """
        try:
            deleted = await self._delete_service(ref)
        except ApiError as exc:
            raise _api_failure(
                exc, action=f"delete the leftover Service of {ref}"
            ) from exc
        if not deleted:
            return False
        self._forget(ref)
        logger.info(
            "leftover function service deleted", extra={"ctx": {"function": str(ref)}}
        )
        return True

    async def _check_definition(self, deployment: FunctionDeployment) -> FunctionRef:
        """Validate what the API server would not, and return the function's ref."""
        names.validate_label(deployment.service)
        namespace = await self._resolve_namespace(deployment.namespace)
        if not deployment.image:
            raise InvalidRequest(
                f"Function {deployment.service!r} has no image: set image to the "
                "container image to run, such as ghcr.io/openfaas/figlet:latest."
            )
        objects.validate_labels(deployment)
        return FunctionRef(deployment.service, namespace)

    async def _secret_mounts(
        self, deployment: FunctionDeployment, namespace: str
    ) -> objects.SecretMounts:
        """Sort the named secrets into mounted ones and image pull secrets.

        Raise InvalidRequest naming the first secret that does not exist.
        """
        projected: list[str] = []
        image_pull: list[str] = []
        for name in dict.fromkeys(deployment.secrets):
            try:
                secret = await self._api.call(
                    self._api.core.read_namespaced_secret, name, namespace
                )
            except ApiError as exc:
                if exc.status == 404:
                    raise InvalidRequest(
                        f"Function {deployment.service!r} names secret {name!r}, "
                        f"which does not exist in namespace {namespace!r}. Create it "
                        "first with 'faas-cli secret create', or remove it from the "
                        "function's secrets."
                    ) from exc
                raise _api_failure(exc, action=f"read secret {name!r}") from exc
            if secret.get("type") in objects.DOCKER_CONFIG_SECRET_TYPES:
                image_pull.append(name)
            else:
                projected.append(name)
        return objects.SecretMounts(
            projected=tuple(projected), image_pull=tuple(image_pull)
        )

    async def _read_managed_secret(self, name: str, namespace: str) -> None:
        try:
            secret = await self._api.call(
                self._api.core.read_namespaced_secret, name, namespace
            )
        except ApiError as exc:
            if exc.status == 404:
                raise self._secret_not_found(name, namespace) from exc
            raise _api_failure(exc, action=f"read secret {name!r}") from exc
        if not _is_managed_secret(secret):
            raise InvalidRequest(
                f"Secret {name!r} in namespace {namespace!r} is not managed by "
                f"faashub (it has no label {objects.SECRET_MANAGED_BY_LABEL}="
                f"{objects.SECRET_MANAGER}), so the provider does not change it. "
                "Change it with kubectl instead."
            )

    async def _resolve_namespace(self, namespace: str) -> str:
        """Return the namespace to use, or raise if functions may not live there."""
        namespace = namespace or self._default_namespace
        names.validate_label(namespace, what="namespace")
        if namespace == SYSTEM_NAMESPACE:
            raise InvalidRequest(
                f"Namespace {SYSTEM_NAMESPACE!r} is not allowed for functions: use "
                f'{self._default_namespace!r} or a namespace annotated openfaas="1".'
            )
        if namespace == self._default_namespace:
            return namespace
        if not self._settings.cluster_wide:
            raise NamespaceNotFound(
                f"Namespace {namespace!r} is not served: this provider serves only "
                f"{self._default_namespace!r}. Set cluster_wide to serve every "
                'namespace annotated openfaas="1".'
            )
        if namespace not in await self._allowed_namespaces(refresh=False):
            raise NamespaceNotFound(
                f"Namespace {namespace!r} is not a function namespace. Annotate it "
                f"with 'kubectl annotate namespace {namespace} openfaas=1'."
            )
        return namespace

    async def _check_invocation_namespace(self, ref: FunctionRef) -> None:
        """Check the namespace of a call; the default one costs no API call."""
        if ref.namespace != self._default_namespace:
            await self._resolve_namespace(ref.namespace)

    async def _allowed_namespaces(self, *, refresh: bool) -> frozenset[str]:
        """Return the namespaces annotated openfaas="1", reused for a few seconds."""
        now = time.monotonic()
        read_at = self._namespaces_read_at
        if not refresh and read_at is not None and now - read_at < NAMESPACE_CACHE_S:
            return self._namespaces
        try:
            body = await self._api.call(self._api.core.list_namespace)
        except ApiError as exc:
            raise _api_failure(exc, action="list the namespaces") from exc
        allowed = frozenset(
            str(item["metadata"]["name"])
            for item in body.get("items") or []
            if (item.get("metadata", {}).get("annotations") or {}).get(
                objects.NAMESPACE_ANNOTATION
            )
            == "1"
            and item["metadata"].get("name") != SYSTEM_NAMESPACE
        )
        self._namespaces = allowed
        self._namespaces_read_at = now
        return allowed

    def _exists_error(self, ref: FunctionRef) -> FunctionExists:
        return FunctionExists(
            f"Function {ref.name!r} already exists in namespace {ref.namespace!r}. "
            "To change it, update it with PUT /system/functions ('faas-cli "
            "deploy' does that)."
        )

    def _not_found_error(self, ref: FunctionRef) -> FunctionNotFound:
        return FunctionNotFound(
            f"Function {ref.name!r} not found in namespace {ref.namespace!r}. List "
            "the deployed functions with GET /system/functions"
            f"?namespace={ref.namespace}."
        )

    def _secret_not_found(self, name: str, namespace: str) -> SecretNotFound:
        return SecretNotFound(
            f"Secret {name!r} not found in namespace {namespace!r}. List the "
            f"secrets with GET /system/secrets?namespace={namespace}."
        )


def _managed_part(deployment: JsonObject) -> JsonObject:
    """Return the parts of a Deployment that an update replaces."""
    return {
        "metadata": _metadata_part(deployment),
        "spec": deployment.get("spec", {}),
    }


def _metadata_part(item: JsonObject) -> JsonObject:
    metadata = item.get("metadata", {})
    return {
        "labels": metadata.get("labels") or {},
        "annotations": metadata.get("annotations") or {},
    }


def _is_managed_secret(secret: JsonObject) -> bool:
    labels = secret.get("metadata", {}).get("labels") or {}
    return labels.get(objects.SECRET_MANAGED_BY_LABEL) in (
        objects.SECRET_MANAGER,
        objects.OPENFAAS_SECRET_MANAGER,
    )


def _api_failure(exc: ApiError, *, action: str, next_step: str = "") -> ProviderError:
    """Map a failed API call to the provider error of its status code.

    `next_step`, when given, is a sentence that ends every message.
    """
    text = f"The Kubernetes API refused to {action}: {exc.message}"
    # The API's own message may lack a final period, so one is added before
    # the extra sentence.
    after_text = f". {next_step}" if next_step else ""
    after_sentence = f" {next_step}" if next_step else ""
    if exc.status == 0:
        return _unavailable_error(exc, action=action, next_step=next_step)
    if exc.status == 400:
        return InvalidRequest(text + after_text)
    if exc.status in (401, 403):
        return Forbidden(
            f"{text}. Grant the provider's service account the RBAC rules of the "
            f"Helm chart.{after_sentence}"
        )
    if exc.status == 404:
        return NamespaceNotFound(text + after_text)
    if exc.status == 409:
        return Conflict(f"{text}. Send the request again.{after_sentence}")
    if exc.status == 422:
        return InvalidObject(text + after_text)
    return StorageError(
        f"Failed to {action}: {exc}{after_text}",
        summary=f"The Kubernetes API failed to {action}: {exc.message}{after_text}",
    )


def _with_sentence(error: ProviderError, sentence: str) -> ProviderError:
    """Return an error of `error`'s type whose message ends with `sentence`."""
    if isinstance(error, StorageError):
        return StorageError(
            f"{error} {sentence}", summary=f"{error.summary} {sentence}"
        )
    return type(error)(f"{error} {sentence}")


def _unavailable_error(
    exc: ApiError, *, action: str, next_step: str
) -> ApiServerUnavailable:
    """Build the error of a request that got no response, and log its cause.

    The caller's message leaves out urllib3's text, which names the provider's
    connection pool and the server's address, so only the log has it.
    """
    api_server_silent.warning(
        "kubernetes api server did not respond: %s", exc, ctx={"action": action}
    )
    if exc.reason == TIMED_OUT:
        what_failed = "The Kubernetes API server did not respond in time"
        what_to_check = "the load and health of the API server"
    else:
        what_failed = "The Kubernetes API server could not be reached"
        what_to_check = "that the API server runs and that the provider can reach it"
    after_sentence = f" {next_step}" if next_step else ""
    return ApiServerUnavailable(
        f"{what_failed}, so the provider could not {action}. Send the request "
        f"again in a few seconds. If the failure persists, check {what_to_check}. "
        f"The provider's log has the details.{after_sentence}"
    )


def _start_error(exc: ApiError, *, url: str, source: str) -> ProviderStartError:
    """Build the error of a failed first list of functions at start.

    Only a 401 or 403 points at the RBAC rules, because the other failures
    (a refused connection, a timeout, a server error) have other causes.
    """
    where = f"the Kubernetes API server at {url} (from {source})"
    if exc.status in (401, 403):
        return ProviderStartError(
            f"Cannot list the function Deployments on {where}: {exc}. Grant the "
            "provider's service account the RBAC rules of the Helm chart."
        )
    if exc.status == 0:
        return ProviderStartError(
            f"Cannot reach {where}: {exc.message}. Check that this URL is right "
            "and that the API server runs and is reachable from the provider."
        )
    return ProviderStartError(
        f"Cannot list the function Deployments on {where}: {exc}."
    )
