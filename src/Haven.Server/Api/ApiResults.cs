using Haven.Protocol;
using Haven.Server.Security;
using Microsoft.AspNetCore.Http;

namespace Haven.Server.Api;

/// <summary>Answers in the protocol's JSON, and the principals the authentication middleware attached.</summary>
internal static class ApiResults
{
    public static IResult Ok<T>(T value) => Results.Json(value, ProtocolJson.Options);

    public static IResult Created<T>(T value) => Results.Json(value, ProtocolJson.Options, statusCode: StatusCodes.Status201Created);

    public static IResult Error(int status, string error, string message, string? hint = null) =>
        Results.Json(new ApiError(error, message, hint), ProtocolJson.Options, statusCode: status);

    /// <summary>The same answer for "does not exist" and "not yours", so no caller learns what other tenants hold.</summary>
    public static IResult NotFound(string what) => Error(StatusCodes.Status404NotFound, "not_found", $"{what} does not exist");

    public static IResult Forbidden(string message) => Error(StatusCodes.Status403Forbidden, "forbidden", message);

    public static IResult BadRequest(string message, string? hint = null) => Error(StatusCodes.Status400BadRequest, "bad_request", message, hint);

    public static AdminPrincipal Admin(this HttpContext context) =>
        context.Items[Authentication.AdminKey] as AdminPrincipal ?? throw new InvalidOperationException("an admin endpoint ran without an authenticated admin");

    public static AgentPrincipal Agent(this HttpContext context) =>
        context.Items[Authentication.AgentKey] as AgentPrincipal ?? throw new InvalidOperationException("an agent endpoint ran without an authenticated agent");

    /// <summary>
    /// Null when the calling administrator may act on <paramref name="tenant"/> (read, or also write); else the
    /// refusal: another tenant, or one that does not exist, is "not found"; a viewer who would write is forbidden.
    /// An administrator's own tenant exists (tenants are never deleted), so only the provider's call looks it up.
    /// </summary>
    public static async Task<IResult?> TenantAccessAsync(this HttpContext context, Haven.Server.Database.ManagementDb db, string tenant, bool write, string forbidden = "viewers cannot change anything")
    {
        var admin = context.Admin();
        if (!admin.CanRead(tenant)
            || (admin.IsProvider && await db.QuerySingleOrDefaultAsync<string>("SELECT id FROM tenants WHERE id = @tenant", new { tenant }, context.RequestAborted).ConfigureAwait(false) is null))
        {
            return NotFound($"tenant {tenant}");
        }

        return write && !admin.CanWrite(tenant) ? Forbidden(forbidden) : null;
    }

    /// <summary>Names of tenants, clients and admins: 1-64 letters, digits, '.', '_', '-', starting with a letter or digit.</summary>
    public static bool IsValidName(string? name) =>
        name is { Length: >= 1 and <= 64 } && char.IsAsciiLetterOrDigit(name[0]) && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');
}
