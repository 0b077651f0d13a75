{{/*
agentPod ROOT KIND WORKLOAD: the pod spec shared by the node DaemonSet and the pod-source
Deployments. Flags are those of `egresswatch agent --help` (tests/test_chart.py parses them).
*/}}
{{- define "egresswatch.agentPodSpec" -}}
{{- $root := .root -}}
automountServiceAccountToken: false   # agents never talk to the API server
securityContext:
  {{- include "egresswatch.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if eq .kind "node" }}
hostNetwork: true                      # a node source probes from the node's own network
dnsPolicy: ClusterFirstWithHostNet     # ...and still resolves the controller's Service
{{- end }}
terminationGracePeriodSeconds: 20      # SIGTERM: up to 10 s to deliver, the rest to the spill file
containers:
  - name: agent
    image: {{ include "egresswatch.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      - agent
      - --controller
      - {{ include "egresswatch.controllerUrl" $root }}
      - --token-file
      - /var/run/egresswatch/token/agent-token
      - --listen
      - 0.0.0.0:{{ $root.Values.agent.port }}
      - --spill-dir
      - /var/lib/egresswatch/spill
      - --buffer-mib
      - {{ $root.Values.agent.bufferMiB | quote }}
      - --spill-mib
      - {{ $root.Values.agent.spillMiB | quote }}
      - --log-level
      - {{ $root.Values.agent.logLevel }}
    env:
      - name: EGRESSWATCH_SOURCE_KIND
        value: {{ .kind }}
      - name: NODE_NAME
        valueFrom:
          fieldRef:
            fieldPath: spec.nodeName
      {{- if eq .kind "pod" }}
      - name: POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      - name: EGRESSWATCH_WORKLOAD   # the designated workload: NAMESPACE/WORKLOAD@NODE
        value: {{ .workload }}
      {{- end }}
    ports:
      - name: metrics
        containerPort: {{ $root.Values.agent.port }}
        protocol: TCP
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      periodSeconds: 10
      timeoutSeconds: 5
      failureThreshold: 6
    readinessProbe:
      httpGet:
        path: /readyz
        port: metrics
      periodSeconds: 10
      timeoutSeconds: 5
    resources:
      {{- toYaml $root.Values.agent.resources | nindent 6 }}
    securityContext:
      {{- include "egresswatch.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      - name: token
        mountPath: /var/run/egresswatch/token
        readOnly: true
      - name: spill
        mountPath: /var/lib/egresswatch/spill
      - name: tmp
        mountPath: /tmp
volumes:
  - name: token
    secret:
      secretName: {{ if eq .kind "node" }}{{ include "egresswatch.tokensSecret" $root }}{{ else }}{{ include "egresswatch.agentTokenSecret" $root }}{{ end }}
      items:
        - key: agent-token
          path: agent-token
  - name: spill
    emptyDir:
      # a little above --spill-mib: the file is bounded by it, the kubelet evicts past this
      sizeLimit: {{ printf "%dMi" (add (int $root.Values.agent.spillMiB) 32) }}
  - name: tmp
    emptyDir:
      sizeLimit: 16Mi
{{- end -}}
