{{- define "edgefleet-controller.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgefleet-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgefleet-controller.labels" -}}
{{ include "edgefleet-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edgefleet-controller.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* PostgreSQL is configured (a URL or a Secret holding one). */}}
{{- define "edgefleet-controller.postgres" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end -}}
{{- end -}}

{{- define "edgefleet-controller.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "edgefleet-controller.fullname" .)) -}}
{{- end -}}

{{- define "edgefleet-controller.pkiSecret" -}}
{{- if .Values.pki.existingSecret -}}
{{- .Values.pki.existingSecret -}}
{{- else if .Values.pki.files -}}
{{- printf "%s-pki" (include "edgefleet-controller.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "edgefleet-controller.adminSecret" -}}
{{- if .Values.bootstrapAdmin.existingSecret -}}
{{- .Values.bootstrapAdmin.existingSecret -}}
{{- else if or .Values.bootstrapAdmin.token .Values.bootstrapAdmin.password -}}
{{- printf "%s-admin" (include "edgefleet-controller.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The migration Job runs (PostgreSQL only: SQLite's one pod migrates at start). */}}
{{- define "edgefleet-controller.migrates" -}}
{{- if and .Values.migration.enabled (include "edgefleet-controller.postgres" .) }}true{{ end -}}
{{- end -}}

{{/* Secrets the migration Job reads must exist before it: hooks of a lower weight. */}}
{{- define "edgefleet-controller.secretHook" -}}
{{- if include "edgefleet-controller.migrates" . }}
annotations:
  helm.sh/hook: pre-install,pre-upgrade
  helm.sh/hook-weight: "-10"
  helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- end -}}

{{/* The files of the data directory's PKI (controller/pki, controller/access.py). */}}
{{- define "edgefleet-controller.pkiFiles" -}}
root.pem root.key server-ca.pem server-ca.key device-ca.pem device-ca.key registry-token.pem registry-token.key
{{- end -}}

{{- define "edgefleet-controller.checks" -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "edgefleet-controller.postgres" .)) -}}
{{- fail (printf "replicas is %d but no PostgreSQL is configured: SQLite is one process. Set database.url or database.existingSecret, or replicas: 1" (int .Values.replicas)) -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "edgefleet-controller.pkiSecret" .)) -}}
{{- fail "replicas above 1 need one shared PKI: set pki.existingSecret or pki.files (make them with `edgefleet controller migrate --data-dir ./ca`)" -}}
{{- end -}}
{{- if not (has .Values.gitops.applier (list "flux" "argocd")) -}}
{{- fail (printf "gitops.applier is %q; use flux or argocd" .Values.gitops.applier) -}}
{{- end -}}
{{- end -}}

{{/* Container env shared by the Deployment and the migration Job. */}}
{{- define "edgefleet-controller.env" -}}
- name: EDGEFLEET_DATA_DIR
  value: /var/lib/edgefleet
- name: EDGEFLEET_HOST
  value: 0.0.0.0
- name: EDGEFLEET_PORT
  value: "8443"
- name: EDGEFLEET_WORKERS
  value: {{ .Values.workers | quote }}
- name: EDGEFLEET_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: EDGEFLEET_CONTROLLER_ID
  value: {{ .Values.controllerId | default (printf "edgefleet-%s" (include "edgefleet-controller.fullname" .)) | quote }}
{{- $fullname := include "edgefleet-controller.fullname" . }}
{{- $names := concat (list $fullname (printf "%s.%s.svc" $fullname .Release.Namespace)) .Values.serverNames }}
{{- if .Values.ingress.enabled }}{{ $names = append $names .Values.ingress.host }}{{ end }}
- name: EDGEFLEET_SERVER_NAMES
  value: {{ $names | uniq | toJson | quote }}
{{- with .Values.publicUrl }}
- name: EDGEFLEET_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.trustedProxies }}
- name: EDGEFLEET_TRUSTED_PROXIES
  value: {{ . | toJson | quote }}
{{- end }}
- name: EDGEFLEET_GITOPS_APPLIER
  value: {{ .Values.gitops.applier | quote }}
- name: EDGEFLEET_GITOPS_REPOSITORIES
  value: {{ .Values.gitops.repositories | quote }}
- name: EDGEFLEET_GITOPS_BRANCH
  value: {{ .Values.gitops.branch | quote }}
- name: EDGEFLEET_GITOPS_WRITER
  value: {{ .Values.gitops.writer | quote }}
{{- with .Values.gitops.remote }}
- name: EDGEFLEET_GITOPS_REMOTE
  value: {{ . | quote }}
{{- end }}
{{- if include "edgefleet-controller.postgres" . }}
- name: EDGEFLEET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "edgefleet-controller.databaseSecret" . }}
      key: {{ if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}
{{- with include "edgefleet-controller.adminSecret" . }}
- name: EDGEFLEET_BOOTSTRAP_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: token
      optional: true
- name: EDGEFLEET_BOOTSTRAP_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: password
      optional: true
{{- end }}
{{- if .Values.pki.passphrase.existingSecret }}
- name: EDGEFLEET_KEY_PASSPHRASE_FILE
  value: /etc/edgefleet/key-passphrase/{{ .Values.pki.passphrase.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The data directory, with the PKI Secret's files placed where the controller reads them. */}}
{{- define "edgefleet-controller.volumeMounts" -}}
- name: data
  mountPath: /var/lib/edgefleet
- name: tmp
  mountPath: /tmp
{{- if include "edgefleet-controller.pkiSecret" . }}
{{- range splitList " " (include "edgefleet-controller.pkiFiles" .) }}
- name: pki
  mountPath: /var/lib/edgefleet/pki/{{ . }}
  subPath: {{ . }}
  readOnly: true
{{- end }}
- name: pki
  mountPath: /var/lib/edgefleet/access-token.key
  subPath: access-token.key
  readOnly: true
{{- end }}
{{- if .Values.pki.passphrase.existingSecret }}
- name: key-passphrase
  mountPath: /etc/edgefleet/key-passphrase
  readOnly: true
{{- end }}
{{- end -}}

{{- define "edgefleet-controller.pkiVolume" -}}
{{- with include "edgefleet-controller.pkiSecret" . }}
- name: pki
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.pki.passphrase.existingSecret }}
- name: key-passphrase
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end -}}
