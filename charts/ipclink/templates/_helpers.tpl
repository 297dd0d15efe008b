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

{{/* The Secret with the metrics certificate: the user's, or the one the operator fills. */}}
{{- define "ipclink.metricsTls" -}}
{{ .Values.metrics.tls.secretName | default (printf "%s-metrics-tls" .Release.Name) }}
{{- end -}}

{{/* The names the metrics certificate carries: the node plugins' and the operator's Services. */}}
{{- define "ipclink.nodeMetricsName" -}}{{ include "ipclink.node" . }}-metrics.{{ .Release.Namespace }}.svc{{- end -}}
{{- define "ipclink.operatorMetricsName" -}}{{ include "ipclink.operator" . }}-metrics.{{ .Release.Namespace }}.svc{{- end -}}

{{/* A projected ServiceAccount token for the node plugins' metrics only (audience
ipclink.dev/metrics, 10 minutes, renewed by the kubelet): what the operator and the
uninstall hook send, never their token for the API server. */}}
{{- define "ipclink.metricsTokenVolume" -}}
- name: metrics-token
  projected:
    sources:
      - serviceAccountToken:
          audience: ipclink.dev/metrics
          expirationSeconds: 600
          path: token
{{- end -}}
