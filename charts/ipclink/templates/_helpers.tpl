{{/* Labels every object carries. */}}
{{- define "ipclink.labels" -}}
app.kubernetes.io/name: ipclink
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component. */}}
{{- define "ipclink.selector" -}}
app.kubernetes.io/name: ipclink
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ipclink.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ipclink.operator" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "ipclink.node" -}}{{ .Release.Name }}-node{{- end -}}
