{{/* Common names and labels for Stowage objects. */}}
{{- define "stowage.fullname" -}}
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

{{- define "stowage.labels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels that select one component's pods: call with (dict "root" . "component" "agent"). */}}
{{- define "stowage.selector" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "stowage.image" -}}
{{- $digest := get .root.Values.image (printf "%sDigest" .component) -}}
{{- if $digest -}}
{{- printf "%s/%s/%s@%s" .root.Values.image.registry .root.Values.image.repository .component $digest -}}
{{- else -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- printf "%s/%s/%s:%s" .root.Values.image.registry .root.Values.image.repository .component $tag -}}
{{- end -}}
{{- end -}}

{{/* The optimizer Service's name and in-cluster DNS name. */}}
{{- define "stowage.service" -}}
{{- printf "%s-optimizer" (include "stowage.fullname" .) -}}
{{- end -}}
{{- define "stowage.serviceHost" -}}
{{- printf "%s.%s.svc" (include "stowage.service" .) .Release.Namespace -}}
{{- end -}}

{{/* The Secret holding the optimizer's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "stowage.tlsSecret" -}}
{{- printf "%s-optimizer-tls" (include "stowage.fullname" .) -}}
{{- end -}}

{{/* "true" when cert-manager issues the certificate. */}}
{{- define "stowage.certManager" -}}
{{- $mode := toString .Values.tls.certManager -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/* The number of optimizer replicas: one with SQLite (a file on one volume). */}}
{{- define "stowage.replicas" -}}
{{- if eq .Values.database.type "sqlite" -}}1{{- else -}}{{ .Values.optimizer.replicas }}{{- end -}}
{{- end -}}

{{/* The Secret with the PostgreSQL URL (key `url`). */}}
{{- define "stowage.databaseSecret" -}}
{{- default (printf "%s-database" (include "stowage.fullname" .)) .Values.database.postgresql.existingSecret -}}
{{- end -}}

{{/* Whether the webhook is registered: asked for, and a controller that enforces (only it
releases the gates the webhook sets). */}}
{{- define "stowage.webhook" -}}
{{- if and .Values.webhook.enabled (eq .Values.optimizer.controller "enforce") -}}
true
{{- end -}}
{{- end -}}

{{/* The pod securityContext shared by the optimizer and the migration Job. */}}
{{- define "stowage.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
