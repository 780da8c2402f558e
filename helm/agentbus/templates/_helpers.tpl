{{/*
Names, labels, the resolved settings of each agent kind, the hardened security contexts, the
connection environment and the checks that JSON schema cannot express.
*/}}

{{- define "agentbus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentbus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agentbus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "agentbus.labels" -}}
helm.sh/chart: {{ include "agentbus.chart" . }}
{{ include "agentbus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentbus
{{- end }}

{{- define "agentbus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentbus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one kind's workers: (dict "root" $ "kind" "echo"). */}}
{{- define "agentbus.agentSelectorLabels" -}}
{{ include "agentbus.selectorLabels" .root }}
app.kubernetes.io/component: agent
agentbus.io/kind: {{ .kind }}
{{- end }}

{{- define "agentbus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "agentbus.locustImage" -}}
{{- $repo := default .Values.image.repository .Values.locust.image.repository }}
{{- $tag := default (printf "%s-loadtest" (default .Chart.AppVersion .Values.image.tag)) .Values.locust.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Deployment name of one kind: (dict "root" $ "kind" "echo"). */}}
{{- define "agentbus.agentName" -}}
{{- printf "%s-agent-%s" (include "agentbus.fullname" .root) .kind | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
One entry of agents.kinds with every default applied, as JSON: (dict "root" $ "kind" $entry).
hasKey, not `default`, so an explicit 0 (replicas: 0) is kept.
*/}}
{{- define "agentbus.kind" -}}
{{- $v := .root.Values -}}
{{- $k := .kind -}}
{{- $a := $k.autoscaling | default dict -}}
{{- $out := dict
  "name" $k.name
  "deployment" (include "agentbus.agentName" (dict "root" .root "kind" $k.name))
  "replicas" (ternary $k.replicas 1 (hasKey $k "replicas"))
  "maxInflight" (ternary $k.maxInflight 0 (hasKey $k "maxInflight"))
  "prefetch" (ternary $k.prefetch -1 (hasKey $k "prefetch"))
  "resources" (ternary $k.resources $v.agents.resources (hasKey $k "resources"))
  "drainTimeoutSeconds" (ternary $k.drainTimeoutSeconds $v.agents.drainTimeoutSeconds (hasKey $k "drainTimeoutSeconds"))
  "env" ($k.env | default list)
  "modules" ($k.modules | default $v.agents.modules)
  "autoscaled" (and $v.scaler.enabled (default false $a.enabled))
  "minReplicas" (ternary $a.minReplicas 1 (hasKey $a "minReplicas"))
  "maxReplicas" (ternary $a.maxReplicas 10 (hasKey $a "maxReplicas"))
  "targetQueueDepth" (ternary $a.targetQueueDepth 10 (hasKey $a "targetQueueDepth"))
  "targetCpu" (ternary $a.targetCpu 0.7 (hasKey $a "targetCpu"))
-}}
{{- toJson $out }}
{{- end }}

{{/* Every kind, resolved: a JSON object {"kinds": [...]} (fromJson cannot return a list). */}}
{{- define "agentbus.kinds" -}}
{{- $kinds := list }}
{{- range .Values.agents.kinds }}
{{- $kinds = append $kinds (include "agentbus.kind" (dict "root" $ "kind" .) | fromJson) }}
{{- end }}
{{- toJson (dict "kinds" $kinds) }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM: the drain plus the shutdown after it. */}}
{{- define "agentbus.gracePeriod" -}}
{{- add (int .kind.drainTimeoutSeconds) (int .root.Values.agents.shutdownMarginSeconds) }}
{{- end }}

{{/* Pod-level security context: Pod Security Standard "restricted". */}}
{{- define "agentbus.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext }}
{{- if not (kindIs "invalid" .runAsUser) }}
runAsUser: {{ .runAsUser }}
{{- end }}
{{- if not (kindIs "invalid" .runAsGroup) }}
runAsGroup: {{ .runAsGroup }}
{{- end }}
{{- if not (kindIs "invalid" .fsGroup) }}
fsGroup: {{ .fsGroup }}
{{- end }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context: non-root, read-only root, nothing to escalate. */}}
{{- define "agentbus.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The writable scratch space a read-only root filesystem needs. */}}
{{- define "agentbus.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "agentbus.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
NATS (and Redis) URLs: from an existing Secret when one is named, so credentials never appear
in a manifest or on a command line; else the plain URL.
*/}}
{{- define "agentbus.connectionEnv" -}}
{{- with .Values.nats }}
{{- if .existingSecret.name }}
- name: AGENTBUS_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret.name }}
      key: {{ .existingSecret.key }}
{{- else }}
- name: AGENTBUS_NATS_URL
  value: {{ .url | quote }}
{{- end }}
{{- if .credentials.secretName }}
- name: AGENTBUS_NATS_CREDS
  value: {{ printf "/etc/agentbus/nats/creds/%s" .credentials.key | quote }}
{{- end }}
{{- if .tls.secretName }}
- name: AGENTBUS_NATS_TLS_CA
  value: /etc/agentbus/nats/tls/ca.crt
{{- if .tls.clientCert }}
- name: AGENTBUS_NATS_TLS_CERT
  value: /etc/agentbus/nats/tls/tls.crt
- name: AGENTBUS_NATS_TLS_KEY
  value: /etc/agentbus/nats/tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.redis }}
{{- if .existingSecret.name }}
- name: AGENTBUS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret.name }}
      key: {{ .existingSecret.key }}
{{- else if .url }}
- name: AGENTBUS_REDIS_URL
  value: {{ .url | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Read-only mounts of the NATS credentials and TLS Secrets (beside connectionEnv). */}}
{{- define "agentbus.natsMounts" -}}
{{- with .Values.nats }}
{{- if .credentials.secretName }}
- name: nats-creds
  mountPath: /etc/agentbus/nats/creds
  readOnly: true
{{- end }}
{{- if .tls.secretName }}
- name: nats-tls
  mountPath: /etc/agentbus/nats/tls
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "agentbus.natsVolumes" -}}
{{- with .Values.nats }}
{{- if .credentials.secretName }}
- name: nats-creds
  secret:
    secretName: {{ .credentials.secretName }}
    defaultMode: 0440
{{- end }}
{{- if .tls.secretName }}
- name: nats-tls
  secret:
    secretName: {{ .tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* Whether Redis is configured at all. */}}
{{- define "agentbus.redisEnabled" -}}
{{- if or .Values.redis.existingSecret.name .Values.redis.url }}true{{ end }}
{{- end }}

{{/* The PromQL selector of one kind's workers: (dict "root" $ "kind" "echo"). */}}
{{- define "agentbus.promSelector" -}}
{{- if .root.Values.prometheus.selector }}
{{- .root.Values.prometheus.selector | replace "{{ .kind }}" .kind }}
{{- else }}
{{- printf "job=%q,namespace=%q,app_kubernetes_io_instance=%q,agentbus_io_kind=%q" "agentbus" .root.Release.Namespace .root.Release.Name .kind }}
{{- end }}
{{- end }}

{{/*
Checks across keys that values.schema.json cannot express (draft-07 has no way to compare two
values), failing the render with a message that names the key.
*/}}
{{- define "agentbus.validate" -}}
{{- $seen := dict }}
{{- range (include "agentbus.kinds" . | fromJson).kinds }}
{{- if hasKey $seen .name }}
{{- fail (printf "agents.kinds: kind %q is listed twice; each kind gets one Deployment" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail (printf "agents.kinds[%s].autoscaling: minReplicas (%d) > maxReplicas (%d)" .name (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- if and .autoscaled (not $.Values.prometheus.url) }}
{{- fail (printf "agents.kinds[%s].autoscaling.enabled needs prometheus.url: the scaler reads its metrics from Prometheus" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics: enable serviceMonitor or podMonitor, not both (every worker would be scraped twice)" }}
{{- end }}
{{- if and .Values.auth.enabled .Values.nats.credentials.secretName }}
{{- fail "auth.enabled and nats.credentials.secretName: the workers get one NATS identity, the NKEY seed of auth.workerSecret or a .creds file, not both" }}
{{- end }}
{{- if and .Values.scaler.admissionPolicy.enabled .Values.scaler.admissionPolicy.required (not (include "agentbus.hasAdmissionPolicy" .)) }}
{{- fail (printf "scaler.admissionPolicy.required: Kubernetes %s has no ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1 needs >= 1.30)" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if not (or (include "agentbus.tenants" .) .Values.tenants.allowAnyTenant) }}
{{- fail "tenants.allowlist: list the tenants these workers serve, or set tenants.allowAnyTenant: true (any subject token then becomes a tenant)" }}
{{- end }}
{{- if and .Values.tests.kind (not (hasKey $seen .Values.tests.kind)) }}
{{- fail (printf "tests.kind %q is not one of agents.kinds" .Values.tests.kind) }}
{{- end }}
{{- end }}

{{/* The kinds the scaler manages (scaler on and the kind's autoscaling on): {"kinds": [...]}. */}}
{{- define "agentbus.autoscaledKinds" -}}
{{- $kinds := list }}
{{- range (include "agentbus.kinds" . | fromJson).kinds }}
{{- if .autoscaled }}
{{- $kinds = append $kinds . }}
{{- end }}
{{- end }}
{{- toJson (dict "kinds" $kinds) }}
{{- end }}

{{/*
The NATS identity of a pod with auth on (docs/security.md): (dict "root" $ "identity" "worker")
for the workers, "tenant" for the helm test and Locust (the tenant tests.tenant). The seed (and
the workers' cluster key) come from an existing Secret mounted at /etc/agentbus/auth.
*/}}
{{- define "agentbus.authEnv" -}}
{{- if .root.Values.auth.enabled }}
{{- if eq .identity "worker" }}
- name: AGENTBUS_NATS_NKEY_SEED
  value: /etc/agentbus/auth/worker.nk
- name: AGENTBUS_CLUSTER_KEY_FILE
  value: /etc/agentbus/auth/cluster.key
# A task's result goes only into its own tenant's inbox: no tenant can aim it at another's.
- name: AGENTBUS_REPLY_PREFIXES
  value: "_INBOX_{tenant}."
{{- else }}
- name: AGENTBUS_NATS_NKEY_SEED
  value: {{ printf "/etc/agentbus/auth/%s.nk" .root.Values.tests.tenant | quote }}
- name: AGENTBUS_NATS_INBOX_PREFIX
  value: {{ printf "_INBOX_%s" .root.Values.tests.tenant | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agentbus.authMounts" -}}
{{- if .Values.auth.enabled }}
- name: nats-auth
  mountPath: /etc/agentbus/auth
  readOnly: true
{{- end }}
{{- end }}

{{- define "agentbus.authVolumes" -}}
{{- if .root.Values.auth.enabled }}
- name: nats-auth
  secret:
    {{- if eq .identity "worker" }}
    secretName: {{ .root.Values.auth.workerSecret }}
    items:
      - key: worker.nk
        path: worker.nk
      - key: cluster.key
        path: cluster.key
    {{- else }}
    secretName: {{ .root.Values.auth.tenantSecret }}
    items:
      - key: {{ printf "%s.nk" .root.Values.tests.tenant }}
        path: {{ printf "%s.nk" .root.Values.tests.tenant }}
    {{- end }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Whether this cluster has admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (GA in 1.30). */}}
{{- define "agentbus.hasAdmissionPolicy" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/* The pods of the monitoring namespace (a NetworkPolicyPeer list). */}}
{{- define "agentbus.monitoringPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.networkPolicy.monitoringNamespace }}
{{- end }}
{{/* The tenant allowlist, comma-separated (tenants.allowlist plus the older agents.tenants); empty: none. */}}
{{- define "agentbus.tenants" -}}
{{- concat (.Values.tenants.allowlist | default list) (.Values.agents.tenants | default list) | uniq | join "," -}}
{{- end }}
{{/* fairness.weights as AGENTBUS_TENANT_WEIGHTS: tenant=weight,... in key order. */}}
{{- define "agentbus.tenantWeights" -}}
{{- $items := list -}}
{{- range $tenant, $weight := . -}}
{{- $items = append $items (printf "%s=%d" $tenant (int $weight)) -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}
