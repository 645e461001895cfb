// Errors once, on the input at fault.
//
// ComfyUI (0.3.75 and later) attaches a validate_inputs message to every input the validator
// reads, so one bad Shortcut Sampler setting (full_steps above steps) came back four times, on
// preset, steps, full_steps and full_step_list. The node starts each message with the input
// at fault ("full_steps: ..."); this keeps only the copy on that input, so the error dialog
// lists the problem once and only that input is ringed. Other nodes' errors are left as they are.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPES = new Set(["MIGMShortcutSampler"]);

function keepInputAtFault(nodeErrors) {
  for (const node of Object.values(nodeErrors ?? {})) {
    if (!NODE_TYPES.has(node?.class_type) || !Array.isArray(node.errors)) continue;
    const onInputs = new Set(node.errors.map((e) => e.extra_info?.input_name));
    const kept = [];
    const shown = new Set();
    for (const error of node.errors) {
      const input = error.extra_info?.input_name;
      const prefix = `${input} - `;
      if (error.type !== "custom_validation_failed" || !input || !error.details?.startsWith(prefix)) {
        kept.push(error);
        continue;
      }
      const message = error.details.slice(prefix.length);
      const atFault = message.match(/^(\w+): /)?.[1];
      if (!onInputs.has(atFault)) {
        kept.push(error);  // names no input of this node: keep every copy rather than guess
      } else if (atFault === input && !shown.has(message)) {
        shown.add(message);
        kept.push({ ...error, details: `${input} - ${message.slice(atFault.length + 2)}` });
      }
    }
    node.errors = kept;
  }
}

app.registerExtension({
  name: "MIGMShortcut.ErrorsOnce",
  setup() {
    const queuePrompt = api.queuePrompt.bind(api);
    // The editor takes both the error dialog and the ringed inputs from this response.
    api.queuePrompt = async (...args) => {
      try {
        return await queuePrompt(...args);
      } catch (error) {
        keepInputAtFault(error?.response?.node_errors);
        throw error;
      }
    };
  },
});
