{{/*
Names, labels and the pieces every faashub container shares.
*/}}

{{- define "faashub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide prefix of every object name. */}}
{{- define "faashub.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "faashub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "faashub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "faashub.labels" -}}
{{ include "faashub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "faashub.image" -}}
{{ include "faashub.imageReference" (dict "key" "image" "image" .Values.image "defaultTag" .Chart.AppVersion) }}
{{- end -}}

{{/*
The image reference of a repository and a tag. Call with a dict of "key"
(the values key, for messages), "image" (repository and tag) and
"defaultTag" (for an empty tag). A digest may end the repository
(repo@sha256:...), or stand in place of the tag (tag sha256:...), and a tag
given with a digest in the repository comes before the digest.
*/}}
{{- define "faashub.imageReference" -}}
{{- $repository := .image.repository -}}
{{- $tag := .image.tag | toString -}}
{{- $digest := "" -}}
{{- $digestPattern := "^sha256:[a-f0-9]{64}$" -}}
{{- if contains "@" $repository -}}
{{- $digest = regexReplaceAll "^[^@]*@" $repository "" -}}
{{- $repository = regexReplaceAll "@.*$" $repository "" -}}
{{- if not (regexMatch $digestPattern $digest) -}}
{{- fail (printf "%s.repository is %q, whose digest is not valid: write the digest as @sha256: followed by 64 lowercase hexadecimal digits" .key .image.repository) -}}
{{- end -}}
{{- else if hasPrefix "sha256:" $tag -}}
{{- if not (regexMatch $digestPattern $tag) -}}
{{- fail (printf "%s.tag is %q, which is not a valid digest: write sha256: followed by 64 lowercase hexadecimal digits" .key $tag) -}}
{{- end -}}
{{- $digest = $tag -}}
{{- $tag = "" -}}
{{- else if not $tag -}}
{{- $tag = .defaultTag -}}
{{- end -}}
{{- if and $tag (not (regexMatch "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$" $tag)) -}}
{{- fail (printf "%s.tag is %q, which is not a valid image tag: use up to 128 letters, digits, underscores, periods and hyphens, not starting with a period or hyphen, or a digest sha256:..." .key $tag) -}}
{{- end -}}
{{- $repository -}}
{{- if $tag -}}:{{ $tag }}{{- end -}}
{{- if $digest -}}@{{ $digest }}{{- end -}}
{{- end -}}

{{/* Service names: every URL the components exchange is built from these. */}}
{{- define "faashub.gatewayName" -}}
{{ include "faashub.fullname" . }}-gateway
{{- end -}}
{{- define "faashub.providerName" -}}
{{ include "faashub.fullname" . }}-provider
{{- end -}}
{{- define "faashub.natsName" -}}
{{ include "faashub.fullname" . }}-nats
{{- end -}}

{{- define "faashub.gatewayUrl" -}}
{{- if .Values.gatewayUrl -}}
{{ .Values.gatewayUrl }}
{{- else if .Values.connectorsOnly -}}
{{ fail "connectorsOnly is true but gatewayUrl is empty: set gatewayUrl to the URL of the existing gateway, e.g. http://gateway.openfaas:8080" }}
{{- else -}}
http://{{ include "faashub.gatewayName" . }}:{{ .Values.gateway.service.port }}
{{- end -}}
{{- end -}}

{{- define "faashub.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://{{ include "faashub.natsName" . }}:4222
{{- else if .Values.nats.url -}}
{{ .Values.nats.url }}
{{- else -}}
{{ fail "nats.enabled is false but nats.url is empty: set nats.url to a NATS server with JetStream, or set nats.enabled=true" }}
{{- end -}}
{{- end -}}

{{/*
The number of bytes in a quantity such as 8Gi. values.schema.json allows only
a whole number with the suffix Ki, Mi, Gi or Ti for the values passed here.
*/}}
{{- define "faashub.quantityBytes" -}}
{{- $factors := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $suffix := regexFind "[KMGT]i$" . -}}
{{- mul (trimSuffix $suffix . | int64) (index $factors $suffix) -}}
{{- end -}}

{{/* The environment every faashub component reads: logging. */}}
{{- define "faashub.commonEnv" -}}
- name: FAASHUB_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: FAASHUB_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- end -}}

{{/*
Where the gateway reads the credentials it requires on /system/* (OpenFaaS's
secret_mount_path): the files basic-auth-user and basic-auth-password.
*/}}
{{- define "faashub.gatewayBasicAuthEnv" -}}
{{- if .Values.basicAuth.enabled -}}
- name: FAASHUB_AUTH_SECRET_MOUNT_PATH
  value: /var/secrets/basic-auth
{{- end }}
{{- end -}}

{{/* Where a queue-worker or connector reads the credentials it sends to the gateway. */}}
{{- define "faashub.clientBasicAuthEnv" -}}
{{- if .Values.basicAuth.enabled -}}
- name: FAASHUB_GATEWAY_SECRET_MOUNT_PATH
  value: /var/secrets/basic-auth
{{- end }}
{{- end -}}

{{- define "faashub.basicAuthMount" -}}
{{- if .Values.basicAuth.enabled -}}
- name: basic-auth
  mountPath: /var/secrets/basic-auth
  readOnly: true
{{- end }}
{{- end -}}

{{- define "faashub.basicAuthVolume" -}}
{{- if .Values.basicAuth.enabled -}}
- name: basic-auth
  secret:
    secretName: {{ .Values.basicAuth.secretName }}
    items:
      - key: basic-auth-user
        path: basic-auth-user
      - key: basic-auth-password
        path: basic-auth-password
{{- end }}
{{- end -}}

{{/*
The provider token: a Secret of one key, `provider-token`, mounted into the
gateway (which sends it) and the provider (which checks it).
*/}}
{{- define "faashub.providerTokenSecretName" -}}
{{ include "faashub.fullname" . }}-provider-token
{{- end -}}

{{- define "faashub.providerTokenMount" -}}
{{- if .Values.providerToken.enabled -}}
- name: provider-token
  mountPath: /var/secrets/provider-token
  readOnly: true
{{- end }}
{{- end -}}

{{- define "faashub.providerTokenVolume" -}}
{{- if .Values.providerToken.enabled -}}
- name: provider-token
  secret:
    secretName: {{ include "faashub.providerTokenSecretName" . }}
    items:
      - key: provider-token
        path: provider-token
{{- end }}
{{- end -}}

{{/*
The NATS token: a Secret of one key, `nats-token`, that the chart generates
when it runs NATS, which then requires it from every client. For a NATS
server you run, nats.tokenSecret names an existing Secret and its key. The
clients (gateway, queue-workers, cron connector) get the token as the file
/var/secrets/nats-token/nats-token.
*/}}
{{- define "faashub.natsTokenSecretName" -}}
{{ include "faashub.fullname" . }}-nats-token
{{- end -}}

{{/* "true" when the chart runs NATS itself, else empty. */}}
{{- define "faashub.chartRunsNats" -}}
{{- if and .Values.nats.enabled (not .Values.connectorsOnly) -}}
true
{{- end -}}
{{- end -}}

{{/*
The Secret `name` and `key` that hold a client's NATS token, as YAML, or
nothing when the client sends no token. Call with "root" and "chartNats",
which is true when the client connects to the NATS server of this chart.
*/}}
{{- define "faashub.natsTokenSecretRef" -}}
{{- if .chartNats -}}
name: {{ include "faashub.natsTokenSecretName" .root }}
key: nats-token
{{- else if .root.Values.nats.tokenSecret.name -}}
name: {{ .root.Values.nats.tokenSecret.name }}
key: {{ .root.Values.nats.tokenSecret.key }}
{{- end -}}
{{- end -}}

{{/* The next three take the arguments of faashub.natsTokenSecretRef. */}}
{{- define "faashub.natsTokenEnv" -}}
{{- if include "faashub.natsTokenSecretRef" . -}}
- name: FAASHUB_NATS_TOKEN_FILE
  value: /var/secrets/nats-token/nats-token
{{- end }}
{{- end -}}

{{- define "faashub.natsTokenMount" -}}
{{- if include "faashub.natsTokenSecretRef" . -}}
- name: nats-token
  mountPath: /var/secrets/nats-token
  readOnly: true
{{- end }}
{{- end -}}

{{- define "faashub.natsTokenVolume" -}}
{{- with include "faashub.natsTokenSecretRef" . | fromYaml -}}
- name: nats-token
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: nats-token
{{- end }}
{{- end -}}

{{/*
Pod-level fields shared by every faashub Deployment. Call with a dict of
"root" (the chart context), "component" (that component's values) and, for
a pod that calls the Kubernetes API, "automountToken" true.
*/}}
{{- define "faashub.podSpecCommon" -}}
{{- $root := .root -}}
automountServiceAccountToken: {{ .automountToken | default false }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container fields shared by every faashub container: image, security. */}}
{{- define "faashub.containerCommon" -}}
image: {{ include "faashub.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/*
Startup, readiness and liveness probes on /healthz of the named port. The
startup probe holds the other two back until the component has started, so
a slow start, such as the provider's first list of functions from a slow
API server, ends with the component's own error in its log rather than a
kill by the liveness probe.
*/}}
{{- define "faashub.probes" -}}
{{- $probes := .root.Values.probes -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $probes.startup.periodSeconds }}
  timeoutSeconds: {{ $probes.startup.timeoutSeconds }}
  failureThreshold: {{ $probes.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $probes.readiness.periodSeconds }}
  timeoutSeconds: {{ $probes.readiness.timeoutSeconds }}
  failureThreshold: {{ $probes.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $probes.liveness.periodSeconds }}
  timeoutSeconds: {{ $probes.liveness.timeoutSeconds }}
  failureThreshold: {{ $probes.liveness.failureThreshold }}
{{- end -}}

{{/* Pod annotations that let Prometheus scrape /metrics on the given port. */}}
{{- define "faashub.scrapeAnnotations" -}}
{{- if .root.Values.metrics.annotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/*
A PodDisruptionBudget for a component with more than one replica. Call with
"root", "name", "replicas" and "selector" (a dict of labels).
*/}}
{{- define "faashub.pdb" -}}
{{- if gt (int .replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "faashub.labels" .root | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- toYaml .selector | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
The Deployment, Service and PodDisruptionBudget of one connector. Call with
a dict of "root", "kind" (kafka, sqs or cron), "values" (that connector's
values), "env", "volumeMounts" and "volumes" (YAML list items, may be empty)
and "serviceAccountName" (may be empty).
*/}}
{{- define "faashub.connector" -}}
{{- $root := .root -}}
{{- $connectors := $root.Values.connectors -}}
{{- $component := printf "%s-connector" .kind -}}
{{- $name := printf "%s-%s" (include "faashub.fullname" $root) $component -}}
{{- $selector := dict "app.kubernetes.io/name" (include "faashub.name" $root) "app.kubernetes.io/instance" $root.Release.Name "app.kubernetes.io/component" $component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "faashub.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  replicas: {{ .values.replicas }}
  selector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "faashub.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
      {{- with include "faashub.scrapeAnnotations" (dict "root" $root "port" $connectors.healthPort) }}
      annotations:
        {{- . | nindent 8 }}
      {{- end }}
    spec:
      {{- with .serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      {{- include "faashub.podSpecCommon" (dict "root" $root "component" .values) | nindent 6 }}
      containers:
        - name: {{ $component }}
          {{- include "faashub.containerCommon" $root | nindent 10 }}
          args: ["connector", {{ .kind | quote }}]
          ports:
            - name: metrics
              containerPort: {{ $connectors.healthPort }}
          env:
            {{- $env := include "faashub.connectorEnv" . }}
            {{- include "faashub.containerEnv" (dict "env" $env "extraEnv" .values.extraEnv "valuesKey" (printf "%sConnector.extraEnv" .kind) "container" $component) | nindent 12 }}
          {{- include "faashub.probes" (dict "root" $root "port" "metrics") | nindent 10 }}
          resources:
            {{- include "faashub.resources" (dict "key" (printf "%sConnector.resources" .kind) "resources" .values.resources) | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "faashub.basicAuthMount" $root | nindent 12 }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- include "faashub.basicAuthVolume" $root | nindent 8 }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "faashub.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
    faashub.dev/metrics: "true"
spec:
  selector:
    {{- toYaml $selector | nindent 4 }}
  ports:
    - name: metrics
      port: {{ $connectors.healthPort }}
      targetPort: metrics
{{- include "faashub.pdb" (dict "root" $root "name" $name "replicas" .values.replicas "selector" $selector) }}
{{- end -}}

{{/*
The resources of a container, as YAML, after the checks that the API server
would make. Call with a dict of "key" (the values key, for messages) and
"resources". The render fails on a quantity that is not valid or is
negative, and on a request above the limit of the same resource.
*/}}
{{- define "faashub.resources" -}}
{{- $key := .key -}}
{{- $requests := .resources.requests | default dict -}}
{{- $limits := .resources.limits | default dict -}}
{{- range $bound, $list := dict "requests" $requests "limits" $limits -}}
{{- range $resource, $value := $list -}}
{{- $_ := include "faashub.quantityValue" (dict "key" (printf "%s.%s.%s" $key $bound $resource) "value" $value) -}}
{{- end -}}
{{- end -}}
{{- range $resource, $request := $requests -}}
{{- if hasKey $limits $resource -}}
{{- $limit := index $limits $resource -}}
{{- $requestValue := include "faashub.quantityValue" (dict "key" (printf "%s.requests.%s" $key $resource) "value" $request) | float64 -}}
{{- $limitValue := include "faashub.quantityValue" (dict "key" (printf "%s.limits.%s" $key $resource) "value" $limit) | float64 -}}
{{- if gt $requestValue $limitValue -}}
{{- fail (printf "%s.requests.%s is %q, above %s.limits.%s %q, and Kubernetes rejects a request above its limit. Lower the request or raise the limit" $key $resource (toString $request) $key $resource (toString $limit)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml .resources -}}
{{- end -}}

{{/*
The value of a Kubernetes quantity (500m, 0.5, 128Mi, 1e3) as a number.
Call with a dict of "key" (the values key, for messages) and "value".
*/}}
{{- define "faashub.quantityValue" -}}
{{- $text := toString .value -}}
{{- $suffixPattern := "([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])" -}}
{{- if hasPrefix "-" $text -}}
{{- fail (printf "%s is %q, which is negative, and Kubernetes rejects a negative request or limit: use 0 or more" .key $text) -}}
{{- end -}}
{{- if not (regexMatch (printf "^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)%s?$" $suffixPattern) $text) -}}
{{- fail (printf "%s is %q, which is not a Kubernetes quantity: use a number with an optional suffix, such as 500m, 0.5, 128Mi or 1Gi" .key $text) -}}
{{- end -}}
{{- $suffix := regexFind (printf "%s$" $suffixPattern) $text -}}
{{- $number := trimPrefix "+" (trimSuffix $suffix $text) -}}
{{- $divisors := dict "m" "1e3" "u" "1e6" "n" "1e9" -}}
{{- $multipliers := dict "k" "1e3" "M" "1e6" "G" "1e9" "T" "1e12" "P" "1e15" "E" "1e18" "Ki" "1024" "Mi" "1048576" "Gi" "1073741824" "Ti" "1099511627776" "Pi" "1125899906842624" "Ei" "1152921504606846976" -}}
{{- if hasKey $divisors $suffix -}}
{{- divf (float64 $number) (float64 (index $divisors $suffix)) -}}
{{- else if hasKey $multipliers $suffix -}}
{{- mulf (float64 $number) (float64 (index $multipliers $suffix)) -}}
{{- else -}}
{{- float64 (trimPrefix "+" $text) -}}
{{- end -}}
{{- end -}}
