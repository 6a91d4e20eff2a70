{{- define "edgefleet-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The runner's Service selects these labels (EDGEFLEET_AGENT_SERVICE_SELECTOR). */}}
{{- define "edgefleet-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgefleet-agent.labels" -}}
{{ include "edgefleet-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edgefleet-agent.registrationSecret" -}}
{{- if .Values.registration.existingSecret -}}
{{- .Values.registration.existingSecret -}}
{{- else if .Values.registration.content -}}
{{- printf "%s-registration" (include "edgefleet-agent.fullname" .) -}}
{{- else -}}
{{- fail "the agent needs its registration file: set registration.existingSecret or registration.content (edgefleet tokens create --registration)" -}}
{{- end -}}
{{- end -}}
