{{/* Chart name. */}}
{{- define "imagesync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "imagesync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "imagesync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imagesync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagesync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "imagesync.labels" -}}
helm.sh/chart: {{ include "imagesync.chart" . }}
{{ include "imagesync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "imagesync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "imagesync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when leader election is on: asked for, or needed because replicas > 1. */}}
{{- define "imagesync.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{- define "imagesync.leaseName" -}}
{{- default (include "imagesync.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "imagesync.caMountPath" -}}/etc/imagesync/ca{{- end -}}

{{- define "imagesync.policyMountPath" -}}/etc/imagesync/policy{{- end -}}

{{/* "true" when the policy selects namespaces by label (the controller then reads Namespaces). */}}
{{- define "imagesync.policyReadsNamespaces" -}}
{{- if .Values.policy.enabled -}}
{{- range .Values.policy.rules -}}
{{- if hasKey . "namespaceSelector" -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The controller image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "imagesync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* "true" when /metrics is served on loopback only (health endpoints then move). */}}
{{- define "imagesync.metricsLocal" -}}
{{- if or .Values.metrics.localhostOnly (has .Values.metrics.bindAddress (list "127.0.0.1" "::1")) -}}true{{- end -}}
{{- end -}}

{{/* The --metrics-addr value (IPv6 addresses in brackets). */}}
{{- define "imagesync.metricsAddr" -}}
{{- $ip := ternary "127.0.0.1" .Values.metrics.bindAddress .Values.metrics.localhostOnly -}}
{{- if contains ":" $ip -}}
{{- printf "[%s]:%v" $ip .Values.metrics.port -}}
{{- else -}}
{{- printf "%s:%v" $ip .Values.metrics.port -}}
{{- end -}}
{{- end -}}

{{/* The name of the port the probes use. */}}
{{- define "imagesync.probePort" -}}
{{- if include "imagesync.metricsLocal" . -}}health{{- else -}}metrics{{- end -}}
{{- end -}}
