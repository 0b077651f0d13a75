{{/* Names and labels. */}}
{{- define "egresswatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "egresswatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selectorLabels COMPONENT: the labels a workload's selector matches. */}}
{{- define "egresswatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "egresswatch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "egresswatch.controllerUrl" -}}
http://{{ include "egresswatch.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.controller.port }}
{{- end -}}

{{- define "egresswatch.tokensSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-tokens" (include "egresswatch.fullname" .)) -}}
{{- end -}}

{{/* The agent-token Secret in a designated namespace. */}}
{{- define "egresswatch.agentTokenSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-agent-token" (include "egresswatch.fullname" .)) -}}
{{- end -}}

{{- define "egresswatch.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "egresswatch.fullname" .)) -}}
{{- end -}}

{{/*
token NAME: a token from the values, else the one the release's Secret already holds (kept
across upgrades), else generated. Stored back in .Values so every template of this render
gets the same one.
*/}}
{{- define "egresswatch.token" -}}
{{- $auth := .root.Values.auth -}}
{{- $generated := get $auth "_generated" | default dict -}}
{{- $value := get $generated .key -}}
{{- if not $value -}}
{{- $value = .given -}}
{{- if not $value -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace (printf "%s-tokens" (include "egresswatch.fullname" .root)) -}}
{{- if and $existing (hasKey (get $existing "data" | default dict) .key) -}}
{{- $value = index $existing.data .key | b64dec -}}
{{- else -}}
{{- $value = randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- $_ := set $generated .key $value -}}
{{- $_ := set $auth "_generated" $generated -}}
{{- end -}}
{{- $value -}}
{{- end -}}

{{/* Pod-level securityContext: the image's numeric user (Dockerfile), seccomp RuntimeDefault. */}}
{{- define "egresswatch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container securityContext: nothing to escalate to, no capability (the TCP traceroute reads
ICMP errors through IP_RECVERR on ordinary sockets), a read-only root filesystem. */}}
{{- define "egresswatch.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The controller's config: the values' config plus what the chart owns. */}}
{{- define "egresswatch.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "listen" (printf "0.0.0.0:%d" (int .Values.controller.port)) -}}
{{- if eq .Values.database.type "sqlite" -}}
{{- $_ := set $config "database" "sqlite+aiosqlite:////var/lib/egresswatch/data/egresswatch.db" -}}
{{- else -}}
{{- $_ := set $config "database_env" "EGRESSWATCH_DATABASE_URL" -}}
{{- end -}}
{{- $_ := set $config "agent_token_env" "EGRESSWATCH_AGENT_TOKEN" -}}
{{- if .Values.auth.read.enabled -}}
{{- $_ := set $config "read_token_env" "EGRESSWATCH_READ_TOKEN" -}}
{{- end -}}
{{- if .Values.auth.run.enabled -}}
{{- $_ := set $config "run_token_env" "EGRESSWATCH_RUN_TOKEN" -}}
{{- end -}}
{{- $kube := deepCopy (.Values.config.kubernetes | default dict) -}}
{{- $_ := set $kube "enabled" true -}}
{{- /* Nodes are designated where node agents run: without them every node would be missing. */ -}}
{{- $_ := set $kube "node_sources" .Values.nodeAgent.enabled -}}
{{- $namespaces := list -}}
{{- range .Values.podAgents.namespaces -}}
{{- $namespaces = append $namespaces .name -}}
{{- end -}}
{{- $_ := set $kube "pod_namespaces" $namespaces -}}
{{- $_ := set $kube "pod_selector" (printf "app.kubernetes.io/component=pod-agent,app.kubernetes.io/instance=%s" .Release.Name) -}}
{{- $_ := set $config "kubernetes" $kube -}}
{{- toYaml $config -}}
{{- end -}}
