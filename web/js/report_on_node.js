// The Shortcut Sampler's report on the node itself.
//
// The sampler returns its report (full and shortcut steps, base passes, seconds, placement) as
// node UI text; ComfyUI shows node UI text only on nodes that display it. This adds a read-only
// "report" box to the sampler, as the core Preview Any node has one, and fills it after each
// run. The box is display-only: it is not saved in workflows or sent with prompts.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const NODE_TYPES = new Set(["MIGMShortcutSampler"]);

app.registerExtension({
  name: "MIGMShortcut.ReportOnNode",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      const widget = ComfyWidgets.STRING(this, "report", ["STRING", { multiline: true }], app).widget;
      widget.options.read_only = true;
      widget.element.readOnly = true;
      widget.element.placeholder = "the report of the last run shows here";
      widget.serialize = false;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === "report");
      if (widget && message?.text) widget.value = message.text.join("\n");
    };
  },
});
