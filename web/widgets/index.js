/** The widget implementations by kind (the `kind` of a widget spec in graph/definitions.js). */
import { comboWidget } from "./combo.js";
import { numberWidget, sliderWidget } from "./number.js";
import { multilineWidget, textWidget } from "./text.js";
import { toggleWidget } from "./toggle.js";
import { uploadWidget } from "./upload.js";

export const WIDGETS = {
  number: numberWidget,
  slider: sliderWidget,
  combo: comboWidget,
  control: comboWidget,
  text: textWidget,
  multiline: multilineWidget,
  toggle: toggleWidget,
  upload: uploadWidget,
};

export function widgetImpl(widget) {
  return WIDGETS[widget.kind] || textWidget;
}
