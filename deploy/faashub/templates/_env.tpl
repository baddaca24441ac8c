{{/*
The environment of each faashub container. Each component's variables are a
named template of their own, so that "faashub.containerEnv" can compare
their names with the component's extraEnv before it renders both.
*/}}

{{/*
The env list of a container: the variables the chart sets, then the
component's extraEnv. Fails when extraEnv sets a variable that the chart
sets too, because Kubernetes then uses the later entry and the chart's
ports, probes and URLs would no longer match what the process reads. Call
with "env" (the chart's variables as YAML list items), "extraEnv" (the
list from values), "valuesKey" (where that list is, for the message) and
"container" (the container's name).
*/}}
{{- define "faashub.containerEnv" -}}
{{- $chartNames := list }}
{{- range fromYamlArray .env }}
{{- $chartNames = append $chartNames .name }}
{{- end }}
{{- range .extraEnv }}
{{- if has .name $chartNames }}
{{- fail (printf "%s sets %s, which the chart already sets for the %s container, and Kubernetes would use the later entry. Remove %s from %s and change the chart value that sets it instead (values.yaml describes each value)" $.valuesKey .name $.container .name $.valuesKey) }}
{{- end }}
{{- end }}
{{- .env }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The gateway's variables. */}}
{{- define "faashub.gatewayEnv" -}}
{{- $natsToken := dict "root" . "chartNats" (include "faashub.chartRunsNats" .) -}}
{{ include "faashub.commonEnv" . }}
- name: FAASHUB_HOST
  value: "0.0.0.0"
- name: FAASHUB_PORT
  value: {{ .Values.gateway.port | quote }}
- name: FAASHUB_PROVIDER_URL
  value: {{ printf "http://%s:%v" (include "faashub.providerName" .) .Values.provider.port | quote }}
- name: FAASHUB_NATS_URL
  value: {{ include "faashub.natsUrl" . | quote }}
{{- include "faashub.natsTokenEnv" $natsToken | nindent 0 }}
- name: FAASHUB_UPSTREAM_TIMEOUT_S
  value: {{ .Values.gateway.upstreamTimeoutS | quote }}
- name: FAASHUB_MAX_BODY_BYTES
  value: {{ .Values.gateway.maxBodyBytes | int64 | quote }}
- name: FAASHUB_AUTH_INVOKE
  value: {{ .Values.gateway.authInvoke | quote }}
{{- include "faashub.gatewayBasicAuthEnv" . | nindent 0 }}
{{- if .Values.providerToken.enabled }}
- name: FAASHUB_PROVIDER_TOKEN_FILE
  value: /var/secrets/provider-token/provider-token
{{- end }}
{{- include "faashub.callbackSigningEnv" . | nindent 0 }}
{{- end -}}

{{/*
The secret that signs callbacks: the queue-workers sign each callback, and
the gateway signs a callback that a dead-letter redrive posts again.
*/}}
{{- define "faashub.callbackSigningEnv" -}}
{{- with .Values.queueWorker.callbackSigning }}
{{- if .secretName }}
- name: FAASHUB_CALLBACK_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The provider's variables. */}}
{{- define "faashub.providerEnv" -}}
{{- $provider := .Values.provider -}}
{{ include "faashub.commonEnv" . }}
- name: FAASHUB_HOST
  value: "0.0.0.0"
- name: FAASHUB_PORT
  value: {{ $provider.port | quote }}
- name: FAASHUB_FUNCTION_NAMESPACE
  value: {{ $provider.functionNamespace | quote }}
- name: FAASHUB_CLUSTER_WIDE
  value: {{ $provider.clusterWide | quote }}
- name: FAASHUB_FUNCTION_ADDRESS_TEMPLATE
  value: {{ printf "http://{name}.{namespace}.svc.%s:8080" $provider.clusterDomain | quote }}
- name: FAASHUB_UPSTREAM_TIMEOUT_S
  value: {{ $provider.upstreamTimeoutS | quote }}
- name: FAASHUB_IMAGE_PULL_POLICY
  value: {{ $provider.functions.imagePullPolicy | quote }}
- name: FAASHUB_SET_NON_ROOT_USER
  value: {{ $provider.functions.setNonRootUser | quote }}
{{- if .Values.providerToken.enabled }}
- name: FAASHUB_AUTH_TOKEN_FILE
  value: /var/secrets/provider-token/provider-token
{{- end }}
{{- end -}}

{{/*
The variables of one queue's worker. Call with "root", "queue" (its entry,
with "name") and "maxInflight".
*/}}
{{- define "faashub.queueWorkerEnv" -}}
{{- $root := .root -}}
{{- $worker := $root.Values.queueWorker -}}
{{- $natsToken := dict "root" $root "chartNats" (include "faashub.chartRunsNats" $root) -}}
{{ include "faashub.commonEnv" $root }}
- name: FAASHUB_QUEUE
  value: {{ .queue.name | quote }}
- name: FAASHUB_NATS_URL
  value: {{ include "faashub.natsUrl" $root | quote }}
{{- include "faashub.natsTokenEnv" $natsToken | nindent 0 }}
- name: FAASHUB_GATEWAY_URL
  value: {{ include "faashub.gatewayUrl" $root | quote }}
- name: FAASHUB_MAX_INFLIGHT
  value: {{ .maxInflight | quote }}
- name: FAASHUB_ACK_WAIT_S
  value: {{ $worker.ackWaitS | quote }}
- name: FAASHUB_UPSTREAM_TIMEOUT_S
  value: {{ $worker.upstreamTimeoutS | quote }}
- name: FAASHUB_CALLBACK_TIMEOUT_S
  value: {{ $worker.callbackTimeoutS | quote }}
- name: FAASHUB_SHUTDOWN_GRACE_S
  value: {{ $worker.shutdownGraceS | quote }}
- name: FAASHUB_RETRY_ATTEMPTS
  value: {{ $worker.retry.attempts | quote }}
- name: FAASHUB_RETRY_CODES
  value: {{ $worker.retry.codes | quote }}
- name: FAASHUB_RETRY_MIN_WAIT_S
  value: {{ $worker.retry.minWaitS | quote }}
- name: FAASHUB_RETRY_MAX_WAIT_S
  value: {{ $worker.retry.maxWaitS | quote }}
- name: FAASHUB_RETRY_JITTER
  value: {{ $worker.retry.jitter | quote }}
- name: FAASHUB_HEALTH_HOST
  value: "0.0.0.0"
- name: FAASHUB_HEALTH_PORT
  value: {{ $worker.healthPort | quote }}
{{- include "faashub.clientBasicAuthEnv" $root | nindent 0 }}
{{- include "faashub.callbackSigningEnv" $root | nindent 0 }}
{{- end -}}

{{/*
The variables of one connector. Call with the arguments of
"faashub.connector"; its "env" holds the connector's own variables.
*/}}
{{- define "faashub.connectorEnv" -}}
{{- $root := .root -}}
{{- $connectors := $root.Values.connectors -}}
{{ include "faashub.commonEnv" $root }}
- name: FAASHUB_GATEWAY_URL
  value: {{ include "faashub.gatewayUrl" $root | quote }}
{{- include "faashub.clientBasicAuthEnv" $root | nindent 0 }}
- name: FAASHUB_ASYNC_INVOCATION
  value: {{ $connectors.asyncInvocation | quote }}
- name: FAASHUB_CALLBACK_URL
  value: {{ $connectors.callbackUrl | quote }}
- name: FAASHUB_CONTENT_TYPE
  value: {{ $connectors.contentType | quote }}
- name: FAASHUB_UPSTREAM_TIMEOUT_S
  value: {{ $connectors.upstreamTimeoutS | quote }}
- name: FAASHUB_REBUILD_INTERVAL_S
  value: {{ $connectors.rebuildIntervalS | quote }}
- name: FAASHUB_MAX_INFLIGHT
  value: {{ $connectors.maxInflight | quote }}
- name: FAASHUB_RETRY_ATTEMPTS
  value: {{ $connectors.retryAttempts | quote }}
- name: FAASHUB_HEALTH_HOST
  value: "0.0.0.0"
- name: FAASHUB_HEALTH_PORT
  value: {{ $connectors.healthPort | quote }}
{{- with .env }}
{{ . }}
{{- end }}
{{- end -}}
