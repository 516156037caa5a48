using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Haven.Core;
using Haven.Protocol;
using Haven.Repository.Crypto;
using Haven.Storage;

namespace Haven.Agent;

/// <summary>Enrolment, ready signals and certificate renewal: the agent's side of /api/v1/enroll and /api/v1/agent.</summary>
public static class AgentClient
{
    public static string AgentVersion { get; } = typeof(AgentClient).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <summary>
    /// Enrols with <paramref name="tokenText"/>: makes a key pair, sends a certificate request over TLS pinned to the CA
    /// fingerprint in the token, checks that the CA the server returns is that CA, and saves everything in
    /// <paramref name="state"/>. Refuses to overwrite an existing enrolment.
    /// </summary>
    public static async Task<AgentIdentity> EnrollAsync(AgentState state, Uri server, string tokenText, string? clientName, CancellationToken ct)
    {
        var token = EnrollmentToken.Parse(tokenText);
        if (state.IsEnrolled)
        {
            var existing = state.LoadIdentity();
            throw new HavenException(ErrorCode.Usage, $"this agent is already enrolled as {existing.ClientName} with {existing.ServerUrl}", $"to enrol again, remove {state.Folder} first");
        }

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        string csr = NewCsr(key);
        using var api = await ApiClient.ConnectAsync(server, token.CaFingerprint, ct: ct).ConfigureAwait(false);
        var response = await api.PostAsync<EnrollResponse>("api/v1/enroll", new EnrollRequest(token.ServerPart, csr, Environment.MachineName, clientName, AgentVersion), ct).ConfigureAwait(false);

        using var ca = X509Certificate2.CreateFromPem(response.CaPem);
        if (!CryptographicOperations.FixedTimeEquals(Pinning.FingerprintBytes(ca), token.CaFingerprint))
        {
            throw new HavenException(ErrorCode.AccessDenied, "the server answered with a CA other than the one the token names", "ask the administrator for a new token");
        }

        var identity = new AgentIdentity(server.ToString(), Convert.ToHexStringLower(token.CaFingerprint), response.ClientId, response.TenantId, response.ClientName, DateTimeOffset.UtcNow);
        state.Save(identity, key.ExportPkcs8PrivateKeyPem(), response.CertificatePem, response.CaPem);
        if (response.RepositoryKeyId is { } keyId && token.KeyPassword is { } secret)
        {
            await CheckRepositoryKeyAsync(state, keyId, secret, ct).ConfigureAwait(false);
            state.SaveRepositoryKey(keyId, secret);
        }

        return identity;
    }

    /// <summary>Fetches the key file named at enrolment and checks that the token's key secret opens it.</summary>
    private static async Task CheckRepositoryKeyAsync(AgentState state, string keyId, string secret, CancellationToken ct)
    {
        await using var store = OpenRepositoryStore(state);
        byte[] bytes;
        try
        {
            bytes = await store.GetAsync(new StoreHandle(FileKind.Key, keyId), ct).ConfigureAwait(false);
        }
        catch (StoreException e)
        {
            throw new HavenException(ErrorCode.NotFound, $"the repository key named in the token cannot be fetched: {e.Message}", "ask the administrator for a new token", e);
        }

        if (KeyFile.Parse(bytes, keyId).TryOpen(secret) is null)
        {
            throw new HavenException(ErrorCode.WrongPassword, "the key secret in the enrolment token does not open the tenant's repository key", "the token was changed or cut short: ask the administrator for a new one");
        }
    }

    /// <summary>The tenant's repository on the server, as a store reached with the agent's certificate (append-only).</summary>
    public static HttpStore OpenRepositoryStore(AgentState state)
    {
        var identity = state.LoadIdentity();
        return new HttpStore($"haven:agent ({identity.ServerUrl}, client {identity.ClientName})", _ => Task.FromResult((Connect(state), HttpStore.AgentBasePath)));
    }

    /// <summary>An API client authenticated by the agent's certificate.</summary>
    public static ApiClient Connect(AgentState state, TimeSpan? timeout = null)
    {
        var identity = state.LoadIdentity();
        return new ApiClient(new Uri(identity.ServerUrl), state.LoadCa(), state.LoadCertificate(), timeout: timeout);
    }

    /// <summary>Sends a ready signal; renews the certificate when the server says it is time. Returns the server's answer.</summary>
    public static async Task<ReadyResponse> ReadyAsync(AgentState state, string reason, CancellationToken ct)
    {
        ReadyResponse answer;
        using (var api = Connect(state))
        {
            answer = await api.PostAsync<ReadyResponse>("api/v1/agent/ready", new ReadyRequest(reason, Environment.MachineName, AgentVersion), ct).ConfigureAwait(false);
        }

        if (answer.RenewCertificate)
        {
            await RenewAsync(state, ct).ConfigureAwait(false);
        }

        return answer;
    }

    /// <summary>Replaces the certificate (and key) with a new one; the old one stays valid until it expires.</summary>
    public static async Task<RenewResponse> RenewAsync(AgentState state, CancellationToken ct)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var api = Connect(state);
        var renewed = await api.PostAsync<RenewResponse>("api/v1/agent/renew", new RenewRequest(NewCsr(key)), ct).ConfigureAwait(false);
        state.SaveCertificate(key.ExportPkcs8PrivateKeyPem(), renewed.CertificatePem);
        return renewed;
    }

    private static string NewCsr(ECDsa key) =>
        new CertificateRequest($"CN={Environment.MachineName}", key, HashAlgorithmName.SHA256).CreateSigningRequestPem();
}
