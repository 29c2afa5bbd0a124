// Behavioural model of the ECP5 MULT18X18D, the subset cnnforge instantiates (hw/mac.py,
// target "ecp5"): an 18x18 multiplier, signed or unsigned per operand (SIGNEDA/SIGNEDB), with
// optional input (REG_INPUTA/B), pipeline (REG_PIPELINE) and output (REG_OUTPUT) registers, each
// "NONE" or clocked by CLK0 with clock enable CE0 and synchronous reset RST0 (SIGNEDA/B travel
// with the operands; cnnforge ties them constant). Cascades (SRIA/B, SOURCEA/B = 1), the C input,
// CLK1..3 and GSR are not modelled.
//
// Yosys ships only a blackbox of this cell (share/ecp5/cells_bb.v, "FIXME: Create sim models"),
// so this model follows the behaviour Lattice's sysDSP usage guide (TN1267) describes; the
// primitive path is checked against it, not against silicon.

module MULT18X18D (
    input  A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15, A16, A17,
    input  B0, B1, B2, B3, B4, B5, B6, B7, B8, B9, B10, B11, B12, B13, B14, B15, B16, B17,
    input  SIGNEDA, SIGNEDB, SOURCEA, SOURCEB,
    input  CLK0, CE0, RST0,
    output P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11, P12, P13, P14, P15, P16, P17, P18, P19, P20, P21, P22, P23, P24, P25, P26, P27, P28, P29, P30, P31, P32, P33, P34, P35
);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter GSR = "ENABLED";
    parameter RESETMODE = "SYNC";

    wire [17:0] a_in = {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b_in = {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};

    reg [17:0] a_r = 18'd0, b_r = 18'd0;
    reg        sa_r = 1'b0, sb_r = 1'b0;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_r <= 18'd0; b_r <= 18'd0; sa_r <= 1'b0; sb_r <= 1'b0;
        end else if (CE0) begin
            a_r <= a_in; b_r <= b_in; sa_r <= SIGNEDA; sb_r <= SIGNEDB;
        end
    end
    wire [17:0] a_op = (REG_INPUTA_CLK == "NONE") ? a_in : a_r;
    wire [17:0] b_op = (REG_INPUTB_CLK == "NONE") ? b_in : b_r;
    wire        sa = (REG_INPUTA_CLK == "NONE") ? SIGNEDA : sa_r;
    wire        sb = (REG_INPUTB_CLK == "NONE") ? SIGNEDB : sb_r;

    wire signed [35:0] a_ext = {{18{sa & a_op[17]}}, a_op};
    wire signed [35:0] b_ext = {{18{sb & b_op[17]}}, b_op};
    wire [35:0] product = a_ext * b_ext;

    reg [35:0] pipe_r = 36'd0, out_r = 36'd0;
    wire [35:0] after_pipe = (REG_PIPELINE_CLK == "NONE") ? product : pipe_r;
    always @(posedge CLK0) begin
        if (RST0) begin
            pipe_r <= 36'd0; out_r <= 36'd0;
        end else if (CE0) begin
            pipe_r <= product; out_r <= after_pipe;
        end
    end
    wire [35:0] p = (REG_OUTPUT_CLK == "NONE") ? after_pipe : out_r;
    assign P0 = p[0];
    assign P1 = p[1];
    assign P2 = p[2];
    assign P3 = p[3];
    assign P4 = p[4];
    assign P5 = p[5];
    assign P6 = p[6];
    assign P7 = p[7];
    assign P8 = p[8];
    assign P9 = p[9];
    assign P10 = p[10];
    assign P11 = p[11];
    assign P12 = p[12];
    assign P13 = p[13];
    assign P14 = p[14];
    assign P15 = p[15];
    assign P16 = p[16];
    assign P17 = p[17];
    assign P18 = p[18];
    assign P19 = p[19];
    assign P20 = p[20];
    assign P21 = p[21];
    assign P22 = p[22];
    assign P23 = p[23];
    assign P24 = p[24];
    assign P25 = p[25];
    assign P26 = p[26];
    assign P27 = p[27];
    assign P28 = p[28];
    assign P29 = p[29];
    assign P30 = p[30];
    assign P31 = p[31];
    assign P32 = p[32];
    assign P33 = p[33];
    assign P34 = p[34];
    assign P35 = p[35];
endmodule
