/** How far (canvas pixels) a press may wander and still be a click, not a drag. */
export const CLICK_SLOP = 4;
