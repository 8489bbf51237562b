{{/*
Named templates of the tollgate chart. The chart keeps to a small part of Helm's template language (fields,
if/with/range, include, and the functions default, quote, toYaml, indent, nindent, sha256sum, required, fail,
int, add, sub, mul, hasKey, printf, trunc, trimSuffix, hasSuffix, dict, set, get, list, append, uniq, sortAlpha,
and/or/not/eq/ne/lt/gt): tests/support/gotemplate.py renders it in the test suite, where helm is not installed.
*/}}

{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "tollgate.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The objects' name: the release name, unless it lacks the chart's name; fullnameOverride wins. */}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if eq .Release.Name (include "tollgate.name" .) -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tollgate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object but its component. */}}
{{- define "tollgate.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tollgate.labels" -}}
{{ include "tollgate.commonLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "tollgate.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding TOLLGATE_ADMIN_TOKEN: existingSecret, else <fullname>-admin (made by the chart when
adminSecret.token is given, by the operator otherwise). */}}
{{- define "tollgate.adminSecretName" -}}
{{- if and .Values.adminSecret.existingSecret .Values.adminSecret.token -}}
{{- fail "adminSecret: give token or existingSecret, not both" -}}
{{- end -}}
{{- .Values.adminSecret.existingSecret | default (printf "%s-admin" (include "tollgate.fullname" .)) -}}
{{- end -}}

{{/* The Secret holding the upstream API keys, one environment variable per key. */}}
{{- define "tollgate.upstreamSecretName" -}}
{{- if and .Values.upstreamSecret.existingSecret .Values.upstreamSecret.keys -}}
{{- fail "upstreamSecret: give keys or existingSecret, not both" -}}
{{- end -}}
{{- .Values.upstreamSecret.existingSecret | default (printf "%s-upstreams" (include "tollgate.fullname" .)) -}}
{{- end -}}

{{/* What the chart writes in the admin Secret it makes (adminSecret.token): the Secret's stringData, and what the
pods' checksum/admin-secret hashes. */}}
{{- define "tollgate.adminSecretData" -}}
TOLLGATE_ADMIN_TOKEN: {{ .Values.adminSecret.token | quote }}
{{- range $name, $token := .Values.adminSecret.extraTokens }}
{{ $name }}: {{ $token | quote }}
{{- end }}
{{- end -}}

{{/* What the chart writes in the upstream Secret it makes (upstreamSecret.keys), likewise. */}}
{{- define "tollgate.upstreamSecretData" -}}
{{- range $name, $key := .Values.upstreamSecret.keys -}}
{{ $name }}: {{ $key | quote }}
{{ end -}}
{{- end -}}

{{/* "true" when a pool of config.scaling acts through the Kubernetes API (`actuator: {type: kubernetes}`): the pods
then need the service-account token, and rbac.yaml grants what the actuator calls. */}}
{{- define "tollgate.scalesThroughKubernetes" -}}
{{- $found := false -}}
{{- with .Values.config.scaling -}}
{{- range $name, $pool := .pools -}}
{{- with $pool.actuator -}}
{{- if eq (.type | default "gauge") "kubernetes" }}{{ $found = true }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $found }}true{{ end -}}
{{- end -}}

{{/* Whether the pods get the service-account token: when asked, or when the Kubernetes actuator needs it. */}}
{{- define "tollgate.automountToken" -}}
{{- if or .Values.serviceAccount.automountToken (include "tollgate.scalesThroughKubernetes" .) -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/* The PodDisruptionBudget's one field, "minAvailable: N" or "maxUnavailable: N" (N a whole number or a percentage;
neither given: maxUnavailable: 1), after refusing both at once, a value that is neither, and a budget that would
never let a pod go at the fewest pods the release runs (replicaCount, or the autoscaler's minimum): a node drain
would wait on it forever. Kubernetes rounds a percentage up for both fields. */}}
{{- define "tollgate.disruptionBudget" -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- $min := "" -}}
{{- if hasKey $pdb "minAvailable" }}{{ $min = printf "%v" $pdb.minAvailable }}{{ end -}}
{{- $max := "" -}}
{{- if hasKey $pdb "maxUnavailable" }}{{ $max = printf "%v" $pdb.maxUnavailable }}{{ end -}}
{{- if and (ne $min "") (ne $max "") -}}
{{- fail (printf "podDisruptionBudget: give minAvailable (%s) or maxUnavailable (%s), not both" $min $max) -}}
{{- end -}}
{{- $field := "maxUnavailable" -}}
{{- $value := $max | default "1" -}}
{{- if ne $min "" }}{{ $field = "minAvailable" }}{{ $value = $min }}{{ end -}}
{{- $percent := hasSuffix "%" $value -}}
{{- $number := trimSuffix "%" $value -}}
{{- $n := int $number -}}
{{- if or (ne (printf "%d" $n) $number) (lt $n 0) -}}
{{- fail (printf "podDisruptionBudget.%s: %s is neither a whole number nor a percentage (e.g. 1 or 25%%)" $field $value) -}}
{{- end -}}
{{- $pods := int .Values.replicaCount -}}
{{- $from := "replicaCount" -}}
{{- if .Values.autoscaling.enabled }}{{ $pods = int .Values.autoscaling.minReplicas }}{{ $from = "autoscaling.minReplicas" }}{{ end -}}
{{- if .Values.keda.enabled }}{{ $pods = int .Values.keda.minReplicas }}{{ $from = "keda.minReplicas" }}{{ end -}}
{{- $fewest := $pods -}}
{{- if lt $pods 1 }}{{ $pods = 1 }}{{ end -}}
{{- $evictable := true -}}
{{- if eq $field "maxUnavailable" -}}
{{- $evictable = gt $n 0 -}}
{{- else if $percent -}}
{{- $evictable = le (mul $n $pods) (mul 100 (sub $pods 1)) -}}
{{- else -}}
{{- $evictable = lt $n $pods -}}
{{- end -}}
{{- if not $evictable -}}
{{- fail (printf "podDisruptionBudget.%s: %s never lets a pod be evicted at %s %d, so node drains and cluster upgrades would hang on this budget; allow at least one pod to go" $field $value $from $fewest) -}}
{{- end -}}
{{ $field }}: {{ $value }}
{{- end -}}

{{/* Where the admin listener binds in the pod: loopback (reach it with kubectl port-forward) unless Prometheus
must scrape /metrics on it, or the network policy names peers for it (networkPolicy.adminFrom). */}}
{{- define "tollgate.adminHost" -}}
{{- if .Values.adminListener.host -}}
{{- .Values.adminListener.host -}}
{{- else if or .Values.serviceMonitor.enabled (and .Values.networkPolicy.enabled .Values.networkPolicy.adminFrom) -}}
0.0.0.0
{{- else -}}
127.0.0.1
{{- end -}}
{{- end -}}

{{/* config.server.shutdown_grace in seconds (default 30): terminationGracePeriodSeconds is computed from it. */}}
{{- define "tollgate.shutdownGraceSeconds" -}}
{{- $grace := 30 -}}
{{- with .Values.config.server -}}
{{- if hasKey . "shutdown_grace" -}}
{{- $grace = int .shutdown_grace -}}
{{- if lt $grace 1 -}}
{{- fail "config.server.shutdown_grace: write it as a whole number of seconds, at least 1 (e.g. 30): the chart sets terminationGracePeriodSeconds above it" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* SIGTERM's budget: the preStop pause, the gateway's drain (shutdown_grace), then a margin to flush and exit. */}}
{{- define "tollgate.terminationGracePeriodSeconds" -}}
{{- add .Values.preStopSleepSeconds (include "tollgate.shutdownGraceSeconds" . | int) .Values.terminationMarginSeconds -}}
{{- end -}}

{{/* A fleet (several pods, or several workers in one) must share limits through Redis and the registry
through a database both reach: refuse what would silently count each pod's limits on its own. */}}
{{- define "tollgate.checkFleet" -}}
{{- $fleet := or .Values.autoscaling.enabled .Values.keda.enabled (gt (int .Values.replicaCount) 1) -}}
{{- if and $fleet (not .Values.redis.url) -}}
{{- fail "redis.url: more than one pod (replicaCount > 1, autoscaling or keda) needs Redis, or each pod would admit every limit on its own" -}}
{{- end -}}
{{- if and $fleet (not .Values.database.url) -}}
{{- fail "database.url: more than one pod needs a shared database (PostgreSQL); each pod's own SQLite file would hold different tenants and keys" -}}
{{- end -}}
{{- if and (ne (printf "%v" .Values.workers) "1") (not .Values.redis.url) -}}
{{- fail "redis.url: workers other than 1 need Redis (the gateway refuses --workers N on the embedded store)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled -}}
{{- fail "autoscaling.enabled and keda.enabled: choose one (KEDA makes its own HorizontalPodAutoscaler)" -}}
{{- end -}}
{{- end -}}

{{/* The gateway's config file: listeners, store and database come from the chart's values (Kubernetes must know
the ports; the URLs reach the config as environment variables), everything else from values.config. */}}
{{- define "tollgate.config" -}}
{{- if hasKey .Values.config "listeners" -}}
{{- fail "config.listeners: set ports, adminListener and publicListener instead (the chart renders listeners)" -}}
{{- end -}}
{{- if hasKey .Values.config "store" -}}
{{- fail "config.store: set redis.url (and redis.options) instead (the chart renders store)" -}}
{{- end -}}
{{- if hasKey .Values.config "database" -}}
{{- fail "config.database: set database.url (and database.options) instead (the chart renders database)" -}}
{{- end -}}
# Rendered by the tollgate Helm chart. ${VAR} values come from the container's environment (Secrets and env).
listeners:
  public:
    host: 0.0.0.0
    port: {{ .Values.ports.public }}
    {{- with .Values.publicListener }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  admin:
    enabled: true
    host: {{ include "tollgate.adminHost" . }}
    port: {{ .Values.ports.admin }}
    token: ${TOLLGATE_ADMIN_TOKEN}
store:
{{- if .Values.redis.url }}
  backend: redis
  url: ${TOLLGATE_REDIS_URL}
{{- else }}
  backend: embedded
{{- end }}
  {{- with .Values.redis.options }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
database:
  url: ${TOLLGATE_DATABASE_URL}
  {{- with .Values.database.options }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{ toYaml .Values.config }}
{{- end -}}
